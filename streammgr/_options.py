"""The one definition of the options that shape streams: name, default, check, doc.

Several layers take the same options by the same keyword names: ``StreamManager``
(the defaults), ``manager.open`` (one stream's overrides), ``EventStreamResponse``
and ``gateway_app`` (the streaming answer), ``ServiceOptions`` and the ``serve``
command (the service). Each option is defined here once, as hypercorn's ``Config``
and httpx's ``Timeout`` do: every layer checks a value with :func:`check_option`,
the command builds its flags' validators, help and environment variables from
:data:`OPTIONS`, and tests/test_options.py checks that each layer named in
``layers`` takes the keyword with this default and documents it with ``doc``.

To add an option: add it here, then add the keyword to each layer it names (the
test says which one lacks it). No I/O and no import from the layers above.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._validate import UNSET, check_count, check_limit, check_seconds

__all__ = ["LAYERS", "OPTIONS", "OVERRIDING", "Option", "check_option"]

LAYERS = (
    "StreamManager",
    "open",
    "EventStreamResponse",
    "gateway_app",
    "ServiceOptions",
    "serve",
)
"""The places that take options: the manager, ``manager.open``, the streaming
response, the gateway, the service's options and the ``serve`` command."""

OVERRIDING = frozenset({"open", "EventStreamResponse"})
"""The layers where one stream's option, left out, is the manager's (default
:data:`~streammgr._validate.UNSET`)."""


@dataclass(frozen=True, slots=True)
class Option:
    """One option: what it is called, what it defaults to, what it accepts.

    Attributes:
        name: the keyword (and, with dashes, the ``serve`` flag; in capitals after
            ``STREAMMGR_``, its environment variable).
        default: the value when it is left out.
        check: ``check(name, value)`` returns the value to use, or raises
            ``TypeError`` / ``ValueError`` with a message naming the option.
        doc: one line that says what it means; every layer that takes the option
            documents it with these words.
        layers: the places (of :data:`LAYERS`) that take it.
        defaults: a default of its own for some layer (``serve``'s limits are those
            of a service, not the library's "no limit").
    """

    name: str
    default: object
    check: Callable[[str, Any], Any]
    doc: str
    layers: frozenset[str]
    defaults: Mapping[str, object] = field(default_factory=dict)

    def default_for(self, layer: str) -> object:
        """The default of this option in ``layer`` (``UNSET``: the manager's)."""
        if layer in OVERRIDING and "StreamManager" in self.layers:
            return UNSET
        return self.defaults.get(layer, self.default)


def _non_negative_seconds(name: str, value: float) -> float:
    """A finite number of seconds, ``0`` included."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number of seconds, at least 0, got {value}")
    return float(value)


def _seconds_or_zero(name: str, value: float | None) -> float | None:
    """``0`` (at once), ``None`` (no bound), or seconds as every timeout takes them."""
    if value == 0 and not isinstance(value, bool):
        return 0.0
    return check_seconds(name, value)


def _count(name: str, value: int) -> int:
    return check_count(name, value, minimum=0)


_MANAGER = frozenset({"StreamManager", "serve"})
_STREAM = frozenset({"StreamManager", "open", "EventStreamResponse"})
_ANSWER = frozenset({"EventStreamResponse", "gateway_app", "ServiceOptions"})

_DEFINITIONS = (
    # -- admission limits: the manager's (or its limiter's) ------------------------------
    Option(
        "max_streams",
        None,
        check_limit,
        "the most streams holding a slot at once (``None``: no limit).",
        _MANAGER,
        {"serve": 100},
    ),
    Option(
        "max_streams_per_key",
        None,
        check_limit,
        "the most streams holding a slot at once for one key (``None``: no limit).",
        _MANAGER,
        {"serve": 10},
    ),
    Option(
        "max_waiting",
        None,
        check_limit,
        "the most streams queued for a slot; more are refused at once "
        "(``0``: never queue; ``None``: no bound).",
        _MANAGER,
        {"serve": 100},
    ),
    # -- one stream's timeouts and buffer: the manager's defaults, open's overrides --------
    Option(
        "acquire_timeout",
        None,
        check_seconds,
        "seconds a stream may wait for a slot before it is refused (``None``: forever).",
        _STREAM | {"serve"},
        {"serve": 5.0},
    ),
    Option(
        "reader_timeout",
        None,
        check_seconds,
        "seconds an item may wait for the reader to take it (``None``: forever).",
        _STREAM | {"serve"},
        {"serve": 30.0},
    ),
    Option(
        "idle_timeout",
        None,
        check_seconds,
        "seconds the producer may deliver nothing (``None``: forever).",
        _STREAM | {"serve"},
        {"serve": 60.0},
    ),
    Option(
        "deadline",
        None,
        check_seconds,
        "the longest life of a stream, in seconds from its admission (``None``: none).",
        _STREAM,
    ),
    Option(
        "buffer_size",
        16,
        _count,
        "hand-offs (items or batches) buffered between producer and reader "
        "(``0``: each is handed over directly).",
        _STREAM,
    ),
    # -- the manager's lifetime -------------------------------------------------------------
    Option(
        "shutdown_grace",
        5.0,
        _non_negative_seconds,
        "seconds active streams get to finish at shutdown.",
        _MANAGER,
    ),
    Option(
        "cleanup_timeout",
        5.0,
        check_seconds,
        "the most seconds a cancelled producer's cleanup may take when it was parked at ``yield``.",
        frozenset({"StreamManager"}),
    ),
    Option(
        "history_size",
        1000,
        _count,
        "how many closed streams ``history()`` remembers.",
        frozenset({"StreamManager"}),
    ),
    # -- the streaming answer -------------------------------------------------------------
    Option(
        "answer_within",
        1.0,
        _seconds_or_zero,
        "the most seconds before the status is decided: a stream still waiting for "
        "a slot then is refused with a 429, an admitted one sends its headers "
        "(``0``: never wait for a slot; ``None``: no deadline).",
        _ANSWER,
        {"ServiceOptions": None},
    ),
    Option(
        "keep_alive",
        15.0,
        check_seconds,
        "seconds without a write before a keep-alive comment (``None``: none).",
        _ANSWER,
    ),
    Option(
        "stall_timeout",
        30.0,
        check_seconds,
        "the most seconds one write may wait for a client that reads nothing "
        "(then ``client_stalled``; ``None``: no bound).",
        _ANSWER,
    ),
)

OPTIONS: Mapping[str, Option] = {option.name: option for option in _DEFINITIONS}
"""Every option, by name."""


def check_option(name: str, value: object) -> Any:
    """``value`` checked as the option ``name`` takes it (see :data:`OPTIONS`).

    Raises:
        TypeError / ValueError: a bad value, named in the message.
    """
    return OPTIONS[name].check(name, value)

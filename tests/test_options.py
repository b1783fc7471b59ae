"""The options defined once (streammgr/_options.py), and every place that takes them.

Each layer named in an option's ``layers`` takes it as a keyword with the table's
default, checks it with the table's check and documents it with the table's words;
no layer takes an option the table does not give it. A new option added in one
place only fails here, naming the place.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import pytest

from streammgr import StreamManager
from streammgr import _options as options_module
from streammgr._options import LAYERS, OPTIONS, Option, check_option
from streammgr.cli import _app as cli
from streammgr.cli._run import ServeSettings
from streammgr.server import EventStreamResponse, ServiceOptions, gateway_app


def _keywords(function: Callable[..., Any], *, skip: int = 0) -> Mapping[str, object]:
    """A callable's keyword parameters and their defaults (``serve``'s with their
    ``Annotated`` metadata, as ``(default, metadata)``)."""
    signature = inspect.signature(function, eval_str=True)
    found: dict[str, object] = {}
    for parameter in list(signature.parameters.values())[skip:]:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        found[parameter.name] = parameter.default
    return found


def _service_fields() -> Mapping[str, object]:
    return {field.name: field.default for field in dataclasses.fields(ServiceOptions)}


# Where each layer's keywords and their documentation are read.
PLACES: dict[str, tuple[Callable[[], Mapping[str, object]], Callable[[], str]]] = {
    "StreamManager": (
        lambda: _keywords(StreamManager.__init__),
        lambda: StreamManager.__doc__ or "",
    ),
    "open": (lambda: _keywords(StreamManager.open), lambda: StreamManager.open.__doc__ or ""),
    "EventStreamResponse": (
        lambda: _keywords(EventStreamResponse.__init__),
        lambda: EventStreamResponse.__doc__ or "",
    ),
    "gateway_app": (lambda: _keywords(gateway_app), lambda: gateway_app.__doc__ or ""),
    "ServiceOptions": (_service_fields, lambda: ServiceOptions.__doc__ or ""),
    "serve": (lambda: _keywords(cli.serve), lambda: ""),  # help: from the table itself
}


def _normal(text: str) -> str:
    return " ".join(text.split())


def _entry(docstring: str, name: str) -> str | None:
    """The text of ``name``'s entry under Args / Attributes, whitespace normalized."""
    match = re.search(
        rf"^(?P<indent>[ ]*){name}: (?P<text>.*?)(?=^(?P=indent)\S|\n\s*\n|\Z)",
        docstring,
        re.MULTILINE | re.DOTALL,
    )
    return None if match is None else _normal(match["text"])


def _serve_flag(name: str) -> Any:
    annotation = inspect.signature(cli.serve, eval_str=True).parameters[name].annotation
    (flag,) = annotation.__metadata__
    return flag


def disagreements(options: Mapping[str, Option]) -> list[str]:
    """Every place where a layer and the table disagree, in words."""
    found: list[str] = []
    serve_settings = {field.name for field in dataclasses.fields(ServeSettings)}
    for layer in LAYERS:
        keywords_of, doc_of = PLACES[layer]
        keywords, docstring = keywords_of(), doc_of()
        for option in options.values():
            if layer not in option.layers:
                if option.name in keywords:
                    found.append(f"{layer} takes {option.name}, not in its layers")
                continue
            if layer == "serve" and option.name not in serve_settings:
                found.append(f"ServeSettings has no {option.name}")  # what serve passes on
            if option.name not in keywords:
                found.append(f"{layer} does not take {option.name}")
                continue
            if keywords[option.name] != option.default_for(layer):
                found.append(
                    f"{layer}: {option.name} defaults to {keywords[option.name]!r}, "
                    f"not {option.default_for(layer)!r}"
                )
            if layer == "serve":
                flag = _serve_flag(option.name)
                if flag.env_var != (f"STREAMMGR_{option.name.upper()}",):
                    found.append(f"serve: --{option.name} has no variable of its own")
                if flag.help != cli._for_people(option.doc):
                    found.append(f"serve: --{option.name}'s help is not the table's doc")
                continue
            entry = _entry(docstring, option.name)
            doc = _normal(option.doc).rstrip(".")
            if entry is None:
                found.append(f"{layer} does not document {option.name}")
            elif doc[:1].lower() + doc[1:] not in entry[:1].lower() + entry[1:]:
                found.append(f"{layer}: {option.name}'s doc is not the table's ({option.doc!r})")
    return found


def test_every_layer_takes_checks_and_documents_its_options_as_the_table_says() -> None:
    assert disagreements(OPTIONS) == []


def test_an_option_added_in_one_place_only_is_named_with_every_place_it_misses() -> None:
    # Adding an option is one entry in the table; its check and doc come with it, and
    # every layer it names that does not take it yet is listed, so it cannot be
    # forgotten in one of them.
    new = Option(
        "max_bytes",
        None,
        lambda name, value: check_option("max_waiting", value),
        "the most bytes a stream may deliver (``None``: no limit).",
        frozenset({"StreamManager", "open", "serve"}),
        {"serve": 10**9},
    )
    assert disagreements({**OPTIONS, "max_bytes": new}) == [
        "StreamManager does not take max_bytes",
        "open does not take max_bytes",
        "ServeSettings has no max_bytes",
        "serve does not take max_bytes",
    ]
    # Taken by a layer, but not in the table: named too.
    shrunk = dict(OPTIONS)
    shrunk["stall_timeout"] = dataclasses.replace(
        OPTIONS["stall_timeout"], layers=frozenset({"EventStreamResponse", "gateway_app"})
    )
    assert disagreements(shrunk) == ["ServiceOptions takes stall_timeout, not in its layers"]
    # A doc changed in the table only: every place that documents it is named.
    reworded = dict(OPTIONS)
    reworded["idle_timeout"] = dataclasses.replace(
        OPTIONS["idle_timeout"], doc="seconds without an item (``None``: forever)."
    )
    assert [line.split(":")[0] for line in disagreements(reworded)] == [
        "StreamManager",
        "open",
        "EventStreamResponse",
        "serve",
    ]


def test_a_new_option_brings_its_check_and_doc_to_the_command_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def positive(name: str, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1 byte, got {value}")
        return value

    new = Option(
        "max_bytes",
        None,
        positive,
        "the most bytes a stream may deliver (``None``: no limit).",
        frozenset({"serve"}),
    )
    monkeypatch.setitem(options_module.OPTIONS, "max_bytes", new)
    assert check_option("max_bytes", 5) == 5
    with pytest.raises(ValueError, match="max_bytes must be at least 1 byte"):
        check_option("max_bytes", 0)
    flag: Any = cli._option("max_bytes")
    assert flag.env_var == ("STREAMMGR_MAX_BYTES",)
    assert flag.help == "The most bytes a stream may deliver (none: no limit)."
    (validate,) = flag.validator
    with pytest.raises(ValueError, match=r"^Must be at least 1 byte, got 0$"):
        validate(int, 0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_streams", 0),
        ("max_waiting", -1),
        ("acquire_timeout", 0.0001),
        ("reader_timeout", float("inf")),
        ("buffer_size", -1),
        ("shutdown_grace", -1.0),
        ("history_size", -1),
    ],
)
def test_the_manager_and_the_command_line_refuse_the_same_values(name: str, value: Any) -> None:
    bad: dict[str, Any] = {name: value}
    with pytest.raises((TypeError, ValueError), match=name):
        StreamManager(**bad)
    if "serve" in OPTIONS[name].layers:
        (validate,) = _serve_flag(name).validator
        with pytest.raises(ValueError, match=r"^Must be"):
            validate(type(value), value)


@pytest.mark.parametrize("name", ["acquire_timeout", "reader_timeout", "deadline", "buffer_size"])
async def test_open_and_the_response_check_an_override_as_the_manager_does(name: str) -> None:
    async def producer() -> Any:
        yield "x"

    bad: dict[str, Any] = {name: -1}
    async with StreamManager() as manager:
        with pytest.raises(ValueError, match=name):
            manager.open(producer, **bad)
        with pytest.raises(ValueError, match=name):
            EventStreamResponse(manager, producer, **bad)


@pytest.mark.parametrize(("name", "value"), [("keep_alive", 0), ("stall_timeout", -1)])
def test_the_gateway_checks_its_answer_options_when_it_is_built(name: str, value: float) -> None:
    # Before, a bad keep_alive or stall_timeout passed gateway_app and failed every
    # streaming request.
    manager = StreamManager()
    bad: dict[str, Any] = {name: value}
    with pytest.raises(ValueError, match=name):
        gateway_app(manager, httpx.AsyncClient(), upstream_url="http://up.example/v1", **bad)

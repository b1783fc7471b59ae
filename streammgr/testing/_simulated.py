"""The simulated upstream for users' own producers: :class:`SimulatedProvider`.

It bundles a :class:`~streammgr.simulate.SimulatedUpstream` (the scenarios and
the fault names of docs/simulate.md), a :class:`TrackingTransport` over its
in-process :class:`~streammgr.simulate.SimulatedTransport`, and the clients that
use it, so a test can both inject a fault per request (the ``streammgr_simulate``
body field) and check that every response was closed exactly once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import httpx

from ..simulate import Fault, SimulatedTransport, SimulatedUpstream
from ..sources import OpenAIChat, SourceTimeouts
from ._leaks import Leak, LeakError
from ._transport import TrackingTransport

__all__ = ["SimulatedProvider", "simulated_client"]

DEFAULT_BASE_URL = "http://simulated.local/v1"
"""Any host works: nothing leaves the process."""


class SimulatedProvider:
    """A simulated OpenAI-compatible provider, in-process, with every response counted.

    Args:
        upstream: the upstream to answer from; ``None``: a new
            ``SimulatedUpstream()`` with the default behaviour.
        base_url: the API root the clients and :meth:`chat` use.

    Attributes:
        upstream: the simulated upstream (``upstream.stats()`` counts its responses).
        transport: the :class:`TrackingTransport` every client of this provider uses.
        base_url: the API root.
    """

    def __init__(
        self, upstream: SimulatedUpstream | None = None, *, base_url: str = DEFAULT_BASE_URL
    ) -> None:
        self.upstream = upstream if upstream is not None else SimulatedUpstream()
        self.transport = TrackingTransport(SimulatedTransport(self.upstream))
        self.base_url = base_url.rstrip("/")

    def __repr__(self) -> str:
        return f"SimulatedProvider({self.upstream!r}, {self.transport!r})"

    def client(self, *, timeout: float | None = None) -> httpx.AsyncClient:
        """A new ``httpx.AsyncClient`` on this provider's tracked transport.

        Close it (``async with provider.client() as http:``). The httpx timeout is
        off by default: the source's own :class:`~streammgr.sources.SourceTimeouts`
        (on the Trio clock) are what a test exercises.
        """
        return httpx.AsyncClient(transport=self.transport, base_url=self.base_url, timeout=timeout)

    def chat(
        self,
        client: httpx.AsyncClient,
        *,
        model: str = "sim-small",
        messages: Sequence[Mapping[str, object]] = ({"role": "user", "content": "hello"},),
        timeouts: SourceTimeouts | None = None,
        fault: Fault | str | None = None,
        **behaviour: object,
    ) -> OpenAIChat:
        """An :class:`~streammgr.sources.OpenAIChat` producer against this provider.

        Args:
            client: a client from :meth:`client`.
            model: any model name (every name is answered).
            messages: the conversation.
            timeouts: the source's timeouts.
            fault: a :class:`~streammgr.simulate.Fault` (or its name) for this request.
            **behaviour: more keys of the ``streammgr_simulate`` field (``tokens``,
                ``fault_after``, ``status``, ``retry_after``, ``stall``, ``seed``...);
                a wrong one is the simulator's 400, raised as
                :class:`~streammgr.UpstreamStatusError` naming the key.

        Raises:
            ValueError: ``fault`` is not a fault's name.
        """
        simulate: dict[str, object] = dict(behaviour)
        if fault is not None:
            if fault not in Fault._value2member_map_:
                names = ", ".join(member.value for member in Fault)
                raise ValueError(f"fault must be None or one of {names}, got {fault!r}")
            simulate["fault"] = str(Fault(fault))
        return OpenAIChat(
            client,
            api_key="sk-simulated",
            model=model,
            messages=list(messages),
            base_url=self.base_url,
            timeouts=timeouts,
            extra_body={"streammgr_simulate": simulate} if simulate else None,
        )

    def leaks(self) -> list[Leak]:
        """Responses not closed exactly once, by the transport's and the upstream's count."""
        found = self.transport.leaks()
        still_open = self.upstream.stats().open
        if still_open and not found:
            found.append(Leak("response", f"the simulated upstream still holds {still_open}"))
        return found

    def check(self) -> None:
        """Raise :class:`LeakError` unless every response was closed exactly once."""
        found = self.leaks()
        if found:
            raise LeakError(found, where="in simulated upstream responses")


def simulated_client(
    upstream: SimulatedUpstream | None = None, *, base_url: str = DEFAULT_BASE_URL
) -> tuple[httpx.AsyncClient, TrackingTransport]:
    """An ``httpx.AsyncClient`` on a tracked simulated transport, and that transport.

    ``http, tracker = simulated_client()``; use ``async with http:``, then
    ``tracker.check()``. For more (the upstream, :meth:`SimulatedProvider.chat`),
    use :class:`SimulatedProvider`.
    """
    provider = SimulatedProvider(upstream, base_url=base_url)
    return provider.client(), provider.transport

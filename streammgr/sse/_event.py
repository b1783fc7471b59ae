"""The event type: :class:`ServerSentEvent`."""

from __future__ import annotations

import json
from typing import Any, NamedTuple


class ServerSentEvent(NamedTuple):
    """One dispatched Server-Sent Event; immutable.

    The field names are those of ``httpx_sse.ServerSentEvent``. A
    :class:`typing.NamedTuple`, the cheapest immutable typed object CPython builds (one
    per event, on the hot path): it compares equal to a 4-tuple of the same fields, and
    unpacks as ``event, data, id, retry = sse``.

    Attributes:
        event: the event type; ``"message"`` when the stream set none.
        data: the data lines of the event joined with ``"\\n"``.
        id: the last event ID when the event was dispatched (the most recent ``id``
            field of the stream, which persists across events), or ``""``.
        retry: the reconnection time in milliseconds if this event's own block carried
            a valid ``retry`` field, else ``None``.
    """

    event: str = "message"
    data: str = ""
    id: str = ""
    retry: int | None = None

    def json(self) -> Any:
        """Decode :attr:`data` as JSON.

        Returns:
            ``json.loads(self.data)``.

        Raises:
            json.JSONDecodeError: the data is not valid JSON.
        """
        return json.loads(self.data)


# Builds an event from a 4-tuple without going through the generated Python
# ``__new__``: about a third cheaper per event.
_new_tuple = tuple.__new__

"""Producers for the upstreams users actually have: SSE over httpx, OpenAI-compatible
chat completions, WebSocket feeds.

Each source is a small object whose instances are producers:
``manager.open(SSESource(client, url))``. This package is the only place that
imports httpx (and, for :class:`WebSocketSource`, the optional trio-websocket).
"""

from ._http import Reconnect as Reconnect
from ._http import SourceTimeouts as SourceTimeouts
from ._http import SSESource as SSESource

__all__ = ["Reconnect", "SSESource", "SourceTimeouts"]

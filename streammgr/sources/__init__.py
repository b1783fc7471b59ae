"""Producers for the upstreams users actually have: SSE over httpx, OpenAI-compatible
chat completions, WebSocket feeds.

Each source is a small object whose instances are producers:
``manager.open(SSESource(client, url))``. This package is the only producer-side
place that imports httpx (``streammgr.simulate`` serves one too, as a transport),
and the only one that imports the optional trio-websocket.

The rooms:

- ``_http.py``: :class:`SSESource`, its :class:`SourceTimeouts` and :class:`Reconnect`
  policy, and the connection attempts (delays, accounting, ``Last-Event-ID``);
- ``_http_connection.py``: one request and its response (checks, timeouts, closing
  on every path), how a read becomes a batch, and the table mapping httpx's errors;
- ``_pools.py``: :class:`ShardedTransport`, the upstream client's pools of bounded
  size (costs flat in the streams held), and the reclaim of httpcore's orphaned
  connections;
- ``_openai.py``: :class:`OpenAIChat` over :class:`SSESource`, typed chunks,
  :func:`collect_chat`;
- ``_websocket.py``: :class:`WebSocketSource`, its ``connect=`` seam and its error
  mapping; ``_websocket_arguments.py``: its argument checks;
- ``_common.py``: what the sources share (credentials, redacted URLs, error-body
  excerpts, ``Retry-After``).
"""

from ._http import Reconnect as Reconnect
from ._http import SourceTimeouts as SourceTimeouts
from ._http import SSESource as SSESource
from ._openai import ChatChunk as ChatChunk
from ._openai import ChatCompletion as ChatCompletion
from ._openai import OpenAIChat as OpenAIChat
from ._openai import ToolCall as ToolCall
from ._openai import ToolCallDelta as ToolCallDelta
from ._openai import Usage as Usage
from ._openai import collect_chat as collect_chat
from ._pools import ShardedTransport as ShardedTransport
from ._websocket import NORMAL_CLOSE_CODES as NORMAL_CLOSE_CODES
from ._websocket import WebSocketSource as WebSocketSource

__all__ = [
    "NORMAL_CLOSE_CODES",
    "ChatChunk",
    "ChatCompletion",
    "OpenAIChat",
    "Reconnect",
    "SSESource",
    "ShardedTransport",
    "SourceTimeouts",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
    "WebSocketSource",
    "collect_chat",
]

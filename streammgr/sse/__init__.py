"""Sans-IO Server-Sent Events: parser, raw mode for proxies, event type and encoder.

Imports nothing but the standard library. The guide: docs/sse.md.
"""

from ._encoder import OPENAI_DONE as OPENAI_DONE
from ._encoder import encode as encode
from ._encoder import encode_comment as encode_comment
from ._encoder import is_done as is_done
from ._event import ServerSentEvent as ServerSentEvent
from ._parser import SSEParser as SSEParser
from ._raw import RawBatch as RawBatch
from ._raw import RawSSEParser as RawSSEParser

__all__ = [
    "OPENAI_DONE",
    "RawBatch",
    "RawSSEParser",
    "SSEParser",
    "ServerSentEvent",
    "encode",
    "encode_comment",
    "is_done",
]

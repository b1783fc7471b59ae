"""streammgr: run many streaming responses at once, safely, on Trio.

The public API is re-exported here; the modules that define it are private.
"""

from ._batch import BatchIterator as BatchIterator
from ._batch import batched as batched
from ._errors import DeadlineExceeded as DeadlineExceeded
from ._errors import IdleTimeout as IdleTimeout
from ._errors import LimiterError as LimiterError
from ._errors import LimiterUnavailable as LimiterUnavailable
from ._errors import ManagerClosed as ManagerClosed
from ._errors import ReaderTimeout as ReaderTimeout
from ._errors import SSEError as SSEError
from ._errors import SSEEventTooLarge as SSEEventTooLarge
from ._errors import StreamCancelled as StreamCancelled
from ._errors import StreamError as StreamError
from ._errors import StreamLimitExceeded as StreamLimitExceeded
from ._errors import StreamTimeout as StreamTimeout
from ._errors import UpstreamAPIError as UpstreamAPIError
from ._errors import UpstreamClosed as UpstreamClosed
from ._errors import UpstreamConnectError as UpstreamConnectError
from ._errors import UpstreamConnectTimeout as UpstreamConnectTimeout
from ._errors import UpstreamDeadlineExceeded as UpstreamDeadlineExceeded
from ._errors import UpstreamError as UpstreamError
from ._errors import UpstreamFirstEventTimeout as UpstreamFirstEventTimeout
from ._errors import UpstreamIdleTimeout as UpstreamIdleTimeout
from ._errors import UpstreamProtocolError as UpstreamProtocolError
from ._errors import UpstreamStatusError as UpstreamStatusError
from ._errors import UpstreamTimeout as UpstreamTimeout
from ._errors import UpstreamTruncated as UpstreamTruncated
from ._gc import GC_INTERVAL as GC_INTERVAL
from ._gc import SERVER_GC_THRESHOLD as SERVER_GC_THRESHOLD
from ._gc import collect_young as collect_young
from ._gc import tune_gc as tune_gc
from ._inline import InlineStream as InlineStream
from ._limits import FairLimiter as FairLimiter
from ._limits import Limiter as Limiter
from ._limits import LimiterSnapshot as LimiterSnapshot
from ._limits import LimiterStatus as LimiterStatus
from ._limits import Permit as Permit
from ._logging import redact as redact
from ._logging import redact_secrets as redact_secrets
from ._malloc import MALLOC_TRIM_INTERVAL as MALLOC_TRIM_INTERVAL
from ._malloc import trim_malloc as trim_malloc
from ._manager import ManagerStats as ManagerStats
from ._manager import StreamManager as StreamManager
from ._registry import NoteValue as NoteValue
from ._registry import RegistryEvent as RegistryEvent
from ._registry import RegistryWatcher as RegistryWatcher
from ._registry import StreamInfo as StreamInfo
from ._states import CloseReason as CloseReason
from ._states import Phase as Phase
from ._stream import ManagedStream as ManagedStream
from ._stream import ProducerContext as ProducerContext
from ._stream import StreamSender as StreamSender
from ._stream import current_producer as current_producer

__version__ = "0.1.0"

__all__ = [
    "GC_INTERVAL",
    "MALLOC_TRIM_INTERVAL",
    "SERVER_GC_THRESHOLD",
    "BatchIterator",
    "CloseReason",
    "DeadlineExceeded",
    "FairLimiter",
    "IdleTimeout",
    "InlineStream",
    "Limiter",
    "LimiterError",
    "LimiterSnapshot",
    "LimiterStatus",
    "LimiterUnavailable",
    "ManagedStream",
    "ManagerClosed",
    "ManagerStats",
    "NoteValue",
    "Permit",
    "Phase",
    "ProducerContext",
    "ReaderTimeout",
    "RegistryEvent",
    "RegistryWatcher",
    "SSEError",
    "SSEEventTooLarge",
    "StreamCancelled",
    "StreamError",
    "StreamInfo",
    "StreamLimitExceeded",
    "StreamManager",
    "StreamSender",
    "StreamTimeout",
    "UpstreamAPIError",
    "UpstreamClosed",
    "UpstreamConnectError",
    "UpstreamConnectTimeout",
    "UpstreamDeadlineExceeded",
    "UpstreamError",
    "UpstreamFirstEventTimeout",
    "UpstreamIdleTimeout",
    "UpstreamProtocolError",
    "UpstreamStatusError",
    "UpstreamTimeout",
    "UpstreamTruncated",
    "batched",
    "collect_young",
    "current_producer",
    "redact",
    "redact_secrets",
    "trim_malloc",
    "tune_gc",
]

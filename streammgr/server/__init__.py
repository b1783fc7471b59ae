"""The server side: a streaming response for a service's own endpoints, the
manager's lifespan, serving with hypercorn's trio worker, and the inspection API
(extra ``server``).

Only this package imports Starlette, FastAPI, prometheus-client and hypercorn;
``import streammgr`` does not import it. The guides: docs/server.md, docs/http-api.md.
"""

from ._admin import admin_app as admin_app
from ._admin import check_exposure as check_exposure
from ._answers import ErrorAnswer as ErrorAnswer
from ._answers import encode_batch as encode_batch
from ._answers import error_answer as error_answer
from ._hypercorn import TESTED_HYPERCORN_VERSIONS as TESTED_HYPERCORN_VERSIONS
from ._hypercorn import Connection as Connection
from ._hypercorn import current_connection as current_connection
from ._hypercorn import serve as serve
from ._lifespan import manager_lifespan as manager_lifespan
from ._response import EventStreamResponse as EventStreamResponse

__all__ = [
    "TESTED_HYPERCORN_VERSIONS",
    "Connection",
    "ErrorAnswer",
    "EventStreamResponse",
    "admin_app",
    "check_exposure",
    "current_connection",
    "encode_batch",
    "error_answer",
    "manager_lifespan",
    "serve",
]

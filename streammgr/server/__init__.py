"""The server side: a streaming response for a service's own endpoints, the
manager's lifespan, the OpenAI-compatible gateway and the service around it, the
inspection API, and serving with hypercorn's trio worker (extra ``server``).

Only this package imports Starlette, FastAPI, prometheus-client and hypercorn;
``import streammgr`` does not import it. The guides: docs/server.md, docs/http-api.md.
"""

from ._access_log import AccessLog as AccessLog
from ._admin import admin_app as admin_app
from ._admin import check_exposure as check_exposure
from ._answers import ErrorAnswer as ErrorAnswer
from ._answers import encode_batch as encode_batch
from ._answers import error_answer as error_answer
from ._chat_page import chat_page_routes as chat_page_routes
from ._gateway import MAX_REQUEST_SIZE as MAX_REQUEST_SIZE
from ._gateway import RequestIdMiddleware as RequestIdMiddleware
from ._gateway import caller_key as caller_key
from ._gateway import gateway_app as gateway_app
from ._hosts import LOOPBACK_HOSTS as LOOPBACK_HOSTS
from ._hosts import HostGuard as HostGuard
from ._hosts import is_loopback_host as is_loopback_host
from ._hypercorn import TESTED_HYPERCORN_VERSIONS as TESTED_HYPERCORN_VERSIONS
from ._hypercorn import Connection as Connection
from ._hypercorn import current_connection as current_connection
from ._hypercorn import serve as serve
from ._hypercorn import tls_context as tls_context
from ._lifespan import manager_lifespan as manager_lifespan
from ._response import EventStreamResponse as EventStreamResponse
from ._service import ServiceOptions as ServiceOptions
from ._service import build_service_app as build_service_app
from ._service import graceful_trigger as graceful_trigger
from ._service import serve_service as serve_service

__all__ = [
    "LOOPBACK_HOSTS",
    "MAX_REQUEST_SIZE",
    "TESTED_HYPERCORN_VERSIONS",
    "AccessLog",
    "Connection",
    "ErrorAnswer",
    "EventStreamResponse",
    "HostGuard",
    "RequestIdMiddleware",
    "ServiceOptions",
    "admin_app",
    "build_service_app",
    "caller_key",
    "chat_page_routes",
    "check_exposure",
    "current_connection",
    "encode_batch",
    "error_answer",
    "gateway_app",
    "graceful_trigger",
    "is_loopback_host",
    "manager_lifespan",
    "serve",
    "serve_service",
    "tls_context",
]

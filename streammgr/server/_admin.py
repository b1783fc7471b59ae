"""The inspection API as an app to mount: :func:`admin_app`, :func:`check_exposure`.

A FastAPI app over a service's own :class:`StreamManager`: FastAPI builds the
OpenAPI document from the typed bodies in :mod:`._admin_models`, and from the
``responses=`` declared on each route (every error with its code, the events
feed's ``text/event-stream``, every 429/503 with its ``Retry-After``). One
middleware, the Host and Origin check (:mod:`._hosts`); authentication is a
dependency of every route, so the document declares it too, and errors are
exception handlers (their one shape, and how the document declares them:
:mod:`._admin_errors`). docs/http-api.md is the guide.

What runs where: the endpoints only read snapshots and call the manager's
non-blocking controls (``cancel``, ``cancel_key``, ``set_limits``); the events feed
is :mod:`._admin_feed`; the metrics are :mod:`._metrics`, whose histogram feed is a
task of this app's lifespan.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

import trio
from fastapi import APIRouter, Body, Depends, FastAPI, Path, Query, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.convertors import CONVERTOR_TYPES, PathConvertor, register_url_convertor

from .._logging import get_logger, redact
from .._manager import StreamManager
from .._registry import StreamInfo
from .._states import CloseReason, Phase
from .._validate import check_count, check_seconds
from ._admin_cluster import add_cluster_routes, cancel_elsewhere, cancel_key_elsewhere
from ._admin_errors import (
    FEED_EVENT,
    AdminError,
    declared_error,
    errors_as_json,
    install_error_handlers,
)
from ._admin_feed import EventFeedResponse, WatcherSlots
from ._admin_models import (
    MAX_PAGE,
    MAX_REASON,
    CancelBody,
    CancelKeyResult,
    CancelResult,
    Health,
    History,
    KeyFilter,
    LabelFilter,
    Limits,
    LimitsUpdate,
    PageCursor,
    PageSize,
    PhaseFilter,
    Stats,
    Stream,
    StreamPage,
)
from ._admin_page import add_page_routes
from ._hosts import HostGuard, check_allowed_hosts, is_loopback_host
from ._metrics import METRICS_CONTENT_TYPE, AdminMetrics

if TYPE_CHECKING:
    from ..cluster import ClusterRegistry

__all__ = ["RETRY_AFTER", "AdminError", "admin_app", "check_exposure"]

RETRY_AFTER = 5
"""Seconds a 429 or 503 of the inspection API tells the client to wait."""

DEFAULT_CANCEL_REASON = "cancelled through the admin API"


def check_exposure(host: str, token: str | None, *, option: str = "--admin-token") -> None:
    """Refuse to serve the inspection API beyond loopback without a token.

    The command line calls it before it starts listening; an application that
    serves :func:`admin_app` itself should too.

    Args:
        host: the address the server will listen on (``"127.0.0.1"``, ``"::1"``,
            ``"localhost"`` are loopback; ``"0.0.0.0"``, ``""``, ``"::"``, any other
            address or name are not).
        token: the admin token, or ``None``.
        option: how the caller names the token in the message.

    Raises:
        ValueError: ``host`` is not loopback and there is no token, or the token is
            empty or has surrounding spaces.
    """
    bad_token = ValueError(f"{option} must be a non-empty token without surrounding spaces")
    if token:
        if token != token.strip():
            raise bad_token
        return
    if is_loopback_host(host.strip()):
        if token is not None:  # "": the admin app would refuse it at start
            raise bad_token
        return
    raise ValueError(
        f"refusing to serve the admin API on {host or 'every address'} without {option}: "
        f"pass {option} (clients then send 'Authorization: Bearer <token>'), "
        f"or listen on 127.0.0.1"
    )


MIN_FRAGMENT = 8
"""The shortest run of a token's characters (or of its base64 spelling) redacted as a
piece of it: a reason may quote a token cut short. Shorter runs are too often words."""


def token_forms(token: str) -> tuple[str, ...]:
    """``token`` and its base64 spellings (standard and URL-safe; at each of the three
    alignments it can have inside a longer encoded value, the characters that only
    its bytes decide), as exact values to redact."""
    raw = token.encode()
    forms = [token]
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + raw).decode()
        # Characters [first, last) carry only the token's bits.
        first, last = -(-8 * offset // 6), 8 * (offset + len(raw)) // 6
        core = encoded[first:last]
        if len(core) >= MIN_FRAGMENT:
            forms += [core, core.translate(_URL_SAFE)]
    return tuple(dict.fromkeys(forms))


_URL_SAFE = str.maketrans("+/", "-_")
_REDACTED = "[REDACTED]"  # as redact() writes it


def _without_fragments(text: str, secrets: list[str]) -> str:
    """``text`` with every run of at least :data:`MIN_FRAGMENT` characters that is a
    piece of one of ``secrets`` replaced by ``[REDACTED]`` (a token cut short)."""
    covered = [False] * len(text)
    for secret in secrets:
        pieces = {
            secret[start : start + MIN_FRAGMENT] for start in range(len(secret) - MIN_FRAGMENT + 1)
        }
        for start in range(len(text) - MIN_FRAGMENT + 1):
            if text[start : start + MIN_FRAGMENT] in pieces:
                covered[start : start + MIN_FRAGMENT] = [True] * MIN_FRAGMENT
    if not any(covered):
        return text
    pieces_out: list[str] = []
    for index, character in enumerate(text):
        if not covered[index]:
            pieces_out.append(character)
        elif index == 0 or not covered[index - 1]:
            pieces_out.append(_REDACTED)
    return "".join(pieces_out)


def _check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
    if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
        raise ValueError(
            f"prefix must be '' or start with '/' and not end with one (e.g. '/admin'), "
            f"got {prefix!r}"
        )
    return prefix


def _check_token(token: str | None) -> str | None:
    if token is None:
        return None
    if not isinstance(token, str) or not token or token != token.strip():
        raise ValueError(
            "token must be a non-empty str without surrounding spaces, or None for no "
            "authentication"
        )
    return token


class _KeyConvertor(PathConvertor):
    """``{key:path}`` that also takes line breaks (an admission key is any str;
    Starlette's ``path`` is ``.*``, which stops at one, so such a key was a 404)."""

    regex = "(?s:.*)"


_KEY_CONVERTOR = "streammgr_admission_key"


def _cursor(info: StreamInfo) -> str:
    raw = json.dumps([info.created_at, info.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, stream_id = json.loads(raw)
        if not isinstance(stream_id, str) or not isinstance(created_at, int | float):
            raise TypeError  # noqa: TRY301 - one message for every bad cursor
        return float(created_at), stream_id
    except (ValueError, TypeError, binascii.Error) as exc:
        raise AdminError(
            400,
            "invalid_cursor",
            "cursor is not one this server gave: pass the next_cursor of the previous "
            "page, or leave cursor out to start from the first page",
        ) from exc


def _page_start(matching: list[StreamInfo], cursor: str) -> int:
    """Where the page after ``cursor`` starts in ``matching`` (creation order).

    After the cursor's stream if it is still in flight; if it has closed since,
    after the streams created before it (one created at the very same instant may
    be listed again, never skipped).
    """
    created_at, stream_id = _read_cursor(cursor)
    for index, info in enumerate(matching):
        if info.id == stream_id:
            return index + 1
    for index, info in enumerate(matching):
        if info.created_at >= created_at:
            return index
    return len(matching)


def _labels(values: list[str]) -> dict[str, str]:
    wanted: dict[str, str] = {}
    for value in values:
        name, colon, label = value.partition(":")
        if not colon or not name:
            raise AdminError(
                422,
                "validation_error",
                f"label must be name:value (e.g. label=model:gpt-4o), got {value!r}",
            )
        wanted[name] = label
    return wanted


def admin_app(
    manager: StreamManager,
    *,
    token: str | None = None,
    prefix: str = "/admin",
    keep_alive: float = 15.0,
    max_watchers: int = 32,
    events_buffer: int = 1024,
    stall_timeout: float = 30.0,
    title: str = "streammgr inspection API",
    allowed_hosts: Sequence[str] | None = None,
    allowed_origins: Sequence[str] = (),
    cluster: ClusterRegistry | None = None,
) -> FastAPI:
    """The inspection API over ``manager``, as an ASGI app (FastAPI) to serve or mount.

    Endpoints, under ``prefix``: ``GET /streams`` (filters, cursor pagination),
    ``GET /streams/events`` (live SSE feed, starting with a snapshot),
    ``GET``/``DELETE /streams/{id}``, ``DELETE /keys/{key}/streams``,
    ``GET /history``, ``GET /stats``, ``GET``/``PUT /limits``, ``GET /healthz``,
    ``GET /metrics`` (Prometheus text, from a registry of this app's own),
    ``GET /`` (the live dashboard: a web page, served without the token since it
    holds no data, and its files under ``GET /static/``),
    ``GET /cluster/streams`` and ``GET /cluster/stats`` (with ``cluster``; else 404
    ``cluster_off``) and ``GET /openapi.json``. Errors are
    ``{"error": {"code", "message"}}``.

    **Cluster mode** (``cluster``, a :class:`streammgr.cluster.ClusterRegistry`
    entered by the caller): the cluster routes list every instance's streams, and a
    cancel of a stream or a key reaches every instance (docs/cluster.md).

    **The prefix** is part of every path the app itself routes: served alone, the
    default answers ``/admin/streams``. Mounted in a bigger app at ``/admin``
    (``Mount("/admin", admin_app(manager, prefix=""))``), pass ``prefix=""``: the
    mount's path then comes first, and the OpenAPI document names it in ``servers``.

    **Authentication.** With ``token``, every endpoint requires
    ``Authorization: Bearer <token>`` (compared in constant time); a missing or
    wrong one is a 401 with ``WWW-Authenticate: Bearer``, logged
    (``admin.unauthorized``) without what was sent. Without ``token`` anyone who can
    reach the app can cancel streams: serve it on loopback only. The command line
    refuses to start exposed beyond loopback without a token, through
    :func:`check_exposure`; call it too if you serve the app yourself.

    **Hosts and origins** (:class:`~streammgr.server.HostGuard`). A web page whose
    domain resolves to 127.0.0.1 is same-origin for the browser (DNS rebinding):
    without ``token``, the app answers only requests whose ``Host`` is a loopback
    name (``localhost``, ``127.0.0.1``, ``[::1]``, any port) or one of
    ``allowed_hosts``; any other gets a 403 (``host_not_allowed``). With ``token``,
    any host unless ``allowed_hosts`` is given. Whatever the token, a PUT, POST or
    DELETE that carries ``Origin`` must come from the request's own origin, one of
    ``allowed_origins`` or an origin on one of ``allowed_hosts`` (403
    ``origin_not_allowed``; ``Origin: null`` is refused).

    **Lifespan.** The app's lifespan runs the task that feeds the metrics'
    histograms from ``manager.watch()``. It does not run the manager: give the
    server app ``lifespan=manager_lifespan(manager)``. Mounted in another app (a
    mount's lifespan is not run), enter ``app.router.lifespan_context(app)`` from the
    outer lifespan, or the histograms stay empty (``streammgr_metrics_feed_up`` 0).

    Args:
        manager: the manager inspected and controlled.
        token: the bearer token required by every endpoint (``None``: none).
        prefix: the path prefix of every endpoint: ``""`` or ``/name``.
        keep_alive: seconds without a write before the events feed sends a comment.
        max_watchers: the most events feeds open at once; more get a 429.
        events_buffer: changes an events-feed client may fall behind before it gets
            a fresh snapshot instead.
        stall_timeout: the most seconds one write of the events feed may wait for a
            client that stopped reading; then the feed and its connection end.
        title: the OpenAPI document's title.
        allowed_hosts: ``Host`` names answered besides the loopback ones
            (``"admin.example"``: any port; ``"admin.example:8443"``; ``"*"``: any
            host). ``None``: loopback names only without ``token``, any host with one.
        allowed_origins: origins whose state-changing requests are accepted besides
            the request's own (e.g. the service's CORS origins; ``"*"`` adds none).
        cluster: the cluster registry of this instance (cluster mode), or ``None``.

    Returns:
        The FastAPI app.

    Raises:
        ValueError / TypeError: a bad argument, named in the message.
    """
    prefix = _check_prefix(prefix)
    token = _check_token(token)
    if allowed_hosts is None:
        allowed_hosts = () if token is None else ("*",)
    allowed_hosts = check_allowed_hosts(allowed_hosts)
    if _KEY_CONVERTOR not in CONVERTOR_TYPES:  # Starlette's registry is process-wide
        register_url_convertor(_KEY_CONVERTOR, _KeyConvertor())
    keep_alive_seconds = check_seconds("keep_alive", keep_alive)
    stall_seconds = check_seconds("stall_timeout", stall_timeout)
    if keep_alive_seconds is None or stall_seconds is None:
        raise TypeError("keep_alive and stall_timeout must be numbers of seconds, not None")
    slots = WatcherSlots(check_count("max_watchers", max_watchers, minimum=1))
    events_buffer = check_count("events_buffer", events_buffer, minimum=1)
    # The token in every spelling an operator's reason may hold it in, scrubbed by the
    # manager too: from what it records, and so from what a stream's reader is told.
    secrets = list(token_forms(token)) if token else []
    for value in secrets:
        manager.add_secret(value)

    def clean(text: str) -> str:
        return redact(text, secrets)

    def clean_reason(text: str) -> str:
        # Once, where a reason enters: the answer, the log line, the registry, the
        # stream's client all get this text.
        return _without_fragments(redact(text, secrets), secrets)

    metrics = AdminMetrics(manager, event_feeds=lambda: slots.open)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with trio.open_nursery() as nursery:
            await nursery.start(metrics.run_feed)
            yield
            nursery.cancel_scope.cancel()

    app = FastAPI(
        title=title,
        description="Inspect and control a streammgr StreamManager (docs/http-api.md).",
        openapi_url=None,  # served below, behind the token like every endpoint
        docs_url=None,  # Swagger UI and ReDoc load scripts from a CDN: not here
        redoc_url=None,
        lifespan=lifespan,
    )

    # For the service's access log (build_service_app): values never to log.
    app.state.secrets = tuple(secrets)
    # First of all: a request naming a host or origin not allowed gets no further.
    app.add_middleware(
        HostGuard,
        allowed_hosts=allowed_hosts,
        allowed_origins=allowed_origins,
        check_origins=True,
    )
    dependencies = [] if token is None else [Security(_authenticator(token))]
    Responses = dict[int | str, dict[str, Any]]
    unauthorized: Responses = (
        {}
        if token is None
        else {401: declared_error("The bearer token is missing or wrong (code unauthorized).")}
    )
    invalid: Responses = {
        422: declared_error("A parameter or the body is invalid (validation_error).")
    }
    not_found: Responses = {404: declared_error("Not in flight nor in history (stream_not_found).")}
    if cluster is not None:
        not_found[503] = declared_error(
            "The owning instance or Redis is unreachable (instance_unreachable, "
            "cluster_unavailable).",
            retry_after=True,
        )
        not_found[504] = declared_error(
            "The owning instance did not answer in time (instance_no_answer)."
        )
    router = APIRouter(prefix=prefix, dependencies=dependencies, responses=unauthorized)
    install_error_handlers(app, router)

    @router.get(
        "/streams",
        summary="List streams in flight",
        responses={**invalid, 400: declared_error("The cursor is not one this server gave.")},
    )
    async def list_streams(
        key: KeyFilter = None,
        phase: PhaseFilter = None,
        label: LabelFilter = None,
        limit: PageSize = 100,
        cursor: PageCursor = None,
    ) -> StreamPage:
        wanted = _labels(label or [])
        phases = set(phase or ())
        matching = [
            info
            for info in manager.streams()
            if (key is None or info.key == key)
            and (not phases or info.phase in phases)
            and all(info.labels.get(name) == value for name, value in wanted.items())
        ]
        start = 0 if cursor is None else _page_start(matching, cursor)
        page = matching[start : start + limit]
        now = trio.current_time()
        more = start + limit < len(matching)
        return StreamPage(
            streams=[Stream.of(info, now, clean) for info in page],
            total=len(matching),
            next_cursor=_cursor(page[-1]) if more and page else None,
        )

    @router.get(
        "/streams/events",
        summary="Live feed of registry changes (SSE), starting with a snapshot",
        response_class=EventFeedResponse,
        status_code=200,
        responses={
            200: {
                "description": (
                    "Server-Sent Events: `snapshot` (every stream in flight; again after "
                    "an overflow), then `opened`, `admitted`, `closed` (a stream each), "
                    "`end` when the manager closes; `: keep-alive` comments between."
                ),
                "content": {"text/event-stream": {"schema": FEED_EVENT}},  # see below
            },
            429: declared_error(
                "Too many events feeds open (too_many_watchers).", retry_after=True
            ),
            503: declared_error("The manager is shutting down (shutting_down).", retry_after=True),
        },
    )
    async def stream_events() -> Response:
        if manager.stats().closing:
            raise _shutting_down()
        if not slots.take():
            raise AdminError(
                429,
                "too_many_watchers",
                f"{slots.limit} events feeds are open already (max_watchers); close one, "
                f"or retry in {RETRY_AFTER}s",
                {"Retry-After": str(RETRY_AFTER)},
            )
        return EventFeedResponse(
            manager,
            slots,
            clean,
            keep_alive=keep_alive_seconds,
            max_buffer=events_buffer,
            stall_timeout=stall_seconds,
        )

    @router.get("/streams/{stream_id}", summary="One stream", responses={**not_found, **invalid})
    async def get_stream(request: Request, stream_id: str) -> Stream:
        info = _find(manager, stream_id, _base(request, prefix))
        return Stream.of(info, trio.current_time(), clean)

    @router.delete(
        "/streams/{stream_id}",
        summary="Cancel one stream",
        responses={
            **not_found,
            **invalid,
            409: declared_error(
                "The stream has closed or is ending (stream_closed, stream_ending)."
            ),
        },
    )
    async def cancel_stream(
        request: Request,
        stream_id: str,
        reason: Annotated[
            str | None,
            Query(max_length=MAX_REASON, description="Why (or give it in the body)."),
        ] = None,
        body: Annotated[CancelBody | None, Body()] = None,
    ) -> CancelResult:
        text = clean_reason(_reason(reason, body))
        if cluster is not None and manager.get(stream_id) is None:
            result, owner = await cancel_elsewhere(
                cluster,
                stream_id,
                text,
                clean,
                base=_base(request, prefix),
                retry_after=RETRY_AFTER,
            )
            get_logger().info(
                "admin.cancelled",
                stream_id=stream_id,
                client=_client(request),
                detail=text,
                instance=owner,
            )
            return result
        info = _find(manager, stream_id, _base(request, prefix))
        if info.phase is Phase.CLOSED:
            raise AdminError(
                409,
                "stream_closed",
                f"stream {stream_id!r} has already closed ({info.close_reason}); nothing to cancel",
            )
        if not manager.cancel(stream_id, reason=text):
            raise AdminError(
                409,
                "stream_ending",
                f"stream {stream_id!r} is already ending (phase {info.phase}); it will close "
                f"by itself: watch GET {_base(request, prefix)}/streams/{stream_id}",
            )
        get_logger().info(
            "admin.cancelled", stream_id=stream_id, client=_client(request), detail=text
        )
        return CancelResult(
            cancelled=True,
            stream=Stream.of(
                _find(manager, stream_id, _base(request, prefix)), trio.current_time(), clean
            ),
        )

    @router.delete(
        "/keys/{key:" + _KEY_CONVERTOR + "}/streams",
        summary="Cancel every stream of a key",
        response_model_exclude_none=True,  # by_instance: in cluster mode only
        responses={
            **invalid,
            **(
                {}
                if cluster is None
                else {
                    503: not_found[503],
                    504: declared_error("An instance did not answer in time."),
                }
            ),
        },
    )
    async def cancel_key(
        request: Request,
        key: Annotated[str, Path(description="The admission key (may hold '/').")],
        reason: Annotated[
            str | None,
            Query(max_length=MAX_REASON, description="Why (or give it in the body)."),
        ] = None,
        body: Annotated[CancelBody | None, Body()] = None,
    ) -> CancelKeyResult:
        text = clean_reason(_reason(reason, body))
        count = manager.cancel_key(key, reason=text)
        by_instance = None
        if cluster is not None:
            by_instance = {cluster.instance_id: count}
            by_instance.update(
                await cancel_key_elsewhere(cluster, key, text, retry_after=RETRY_AFTER)
            )
            count = sum(by_instance.values())
        get_logger().info(
            "admin.cancelled_key", key=key, cancelled=count, client=_client(request), detail=text
        )
        return CancelKeyResult(key=key, cancelled=count, by_instance=by_instance)

    add_cluster_routes(router, cluster, clean, retry_after=RETRY_AFTER)

    @router.get("/history", summary="Recently closed streams, newest first", responses=invalid)
    async def history(
        key: Annotated[str | None, Query(description="Only streams of this key.")] = None,
        reason: Annotated[
            list[CloseReason] | None,
            Query(description="Only streams closed for these reasons (repeat)."),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="The most returned.")] = 100,
    ) -> History:
        reasons = set(reason or ())
        matching = [
            info
            for info in reversed(manager.history())
            if (key is None or info.key == key) and (not reasons or info.close_reason in reasons)
        ]
        now = trio.current_time()
        return History(
            streams=[Stream.of(info, now, clean) for info in matching[:limit]],
            total=len(matching),
        )

    @router.get("/stats", summary="Counters and limits now")
    async def stats() -> Stats:
        return Stats.of(manager.stats())

    @router.get("/limits", summary="The admission limits")
    async def get_limits() -> Limits:
        return _limits(manager)

    @router.put(
        "/limits",
        summary="Change admission limits now",
        responses={
            **invalid,
            400: declared_error("The limiter refused the values (invalid_limits)."),
        },
    )
    async def put_limits(request: Request, update: LimitsUpdate) -> Limits:
        changes = {name: getattr(update, name) for name in update.model_fields_set}
        try:
            manager.set_limits(**changes)
        except (ValueError, TypeError) as exc:
            raise AdminError(400, "invalid_limits", f"{exc}; nothing was changed") from exc
        get_logger().info("admin.limits_changed", client=_client(request), **changes)
        return _limits(manager)

    @router.get(
        "/healthz",
        summary="Liveness: 200 while the manager admits streams",
        responses={
            503: declared_error("The manager is shutting down (shutting_down).", retry_after=True)
        },
    )
    async def healthz() -> Health:
        current = manager.stats()
        if current.closing:
            raise _shutting_down()
        limiter = manager.limiter.status()
        return Health(
            status="degraded" if limiter.degraded else "ok",
            active=current.active,
            waiting=current.waiting,
            limiter_degraded=limiter.degraded,
            limiter_detail=redact(limiter.detail, secrets) if limiter.detail else None,
            leases_lost=limiter.leases_lost,
        )

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        status_code=200,
        responses={
            200: {
                "description": "The Prometheus text exposition format (version 0.0.4).",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    )
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    generate = app.openapi

    def openapi_document() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = errors_as_json(generate())
            # FastAPI merges its own {"type": "string"} (the feed's response class is
            # not JSON) into the event schema above: put the event schema back alone.
            feed = document["paths"][f"{prefix}/streams/events"]["get"]["responses"]["200"]
            feed["content"] = {"text/event-stream": {"schema": FEED_EVENT}}
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi_document  # type: ignore[method-assign]

    @router.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> JSONResponse:
        document = app.openapi()
        root_path = request.scope.get("root_path", "")
        if root_path:
            document = {**document, "servers": [{"url": root_path}]}
        return JSONResponse(document)

    app.include_router(router)
    add_page_routes(app, prefix)
    return app


def _find(manager: StreamManager, stream_id: str, base: str) -> StreamInfo:
    """The stream, else a 404 naming the real paths (``base``: see :func:`_base`)."""
    info = manager.get(stream_id)
    if info is None:
        raise AdminError(
            404,
            "stream_not_found",
            f"no stream {stream_id!r} in flight or in the recent history; list streams "
            f"with GET {base}/streams or closed ones with GET {base}/history",
        )
    return info


def _reason(query: str | None, body: CancelBody | None) -> str:
    from_body = None if body is None else body.reason
    if query is not None and from_body is not None:
        raise AdminError(
            422, "validation_error", "give the reason once: as ?reason= or in the body"
        )
    text = query if query is not None else from_body
    return DEFAULT_CANCEL_REASON if text is None else text


def _base(request: Request, prefix: str) -> str:
    """The path before the API's own routes, as clients see it: the mount's path
    (``/admin`` in the service), then ``prefix``."""
    return str(request.scope.get("root_path", "")) + prefix


def _limits(manager: StreamManager) -> Limits:
    current = manager.stats()
    return Limits(
        max_streams=current.max_streams,
        max_streams_per_key=current.max_streams_per_key,
        max_waiting=current.max_waiting,
    )


def _shutting_down() -> AdminError:
    return AdminError(
        503,
        "shutting_down",
        f"the stream manager is shutting down; retry in {RETRY_AFTER}s (or on another instance)",
        {"Retry-After": str(RETRY_AFTER)},
    )


def _client(request: Request) -> str | None:
    return None if request.client is None else request.client.host


# Module-level: FastAPI resolves the (string) annotations below in this module's globals.
_BEARER = HTTPBearer(
    auto_error=False, description="The admin token: 'Authorization: Bearer <token>'."
)


def _authenticator(token: str) -> Callable[..., Any]:
    expected = token.encode()

    async def authenticate(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
    ) -> None:
        if credentials is None:
            problem = "missing"
        else:
            # Header values arrive decoded as latin-1: back to the bytes sent.
            presented = credentials.credentials.encode("latin-1")
            if hmac.compare_digest(presented, expected):
                return
            problem = "wrong"
        # Never the presented value: a wrong token is often a right one for elsewhere.
        get_logger().warning(
            "admin.unauthorized",
            problem=problem,
            method=request.method,
            path=redact(request.url.path, [token]),  # a token pasted in a path too
            client=_client(request),
        )
        raise AdminError(
            401,
            "unauthorized",
            f"the bearer token is {problem}: send 'Authorization: Bearer <token>' with the "
            f"admin token the server was started with",
            {"WWW-Authenticate": "Bearer"},
        )

    return authenticate

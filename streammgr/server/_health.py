"""Probes at the service's root: ``GET /healthz`` (alive) and ``GET /readyz`` (ready).

Minimal JSON, no authentication and no Host check (a kubelet names the pod's IP as
``Host``): they say only whether the process answers and whether its manager admits
streams, nothing an anonymous caller could use. The inspection API's
``/admin/healthz`` (counts, behind its token) stays.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._manager import StreamManager

__all__ = ["ReadyState", "health_routes"]


class ReadyState:
    """Whether the service's lifespan has started the manager (``started``) and
    ended it (``stopped``); :func:`build_service_app`'s lifespan sets both."""

    __slots__ = ("started", "stopped")

    def __init__(self) -> None:
        self.started = False
        self.stopped = False


_NO_STORE = {"cache-control": "no-store"}
_METHODS = frozenset({"GET", "HEAD"})
_EVERY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def health_routes(manager: StreamManager, state: ReadyState) -> list[Route]:
    """``/healthz`` and ``/readyz`` (GET and HEAD) over ``manager``.

    ``/healthz``: 200 ``{"status": "ok"}`` while the process answers. ``/readyz``:
    200 ``{"status": "ready"}`` while the manager runs and admits streams; 503
    ``{"status": "starting"}`` before the lifespan has started it, 503
    ``{"status": "draining"}`` once its shutdown has begun (a signal came: take the
    instance out of the load balancer), 503 ``{"status": "degraded"}`` while its
    admission limiter has lost its backend (Redis; ``/admin/healthz`` says more).
    """

    async def healthz(request: Request) -> Response:
        if request.method not in _METHODS:
            return _not_allowed(request)
        return JSONResponse({"status": "ok"}, headers=_NO_STORE)

    async def readyz(request: Request) -> Response:
        if request.method not in _METHODS:
            return _not_allowed(request)
        if not state.started:
            return JSONResponse({"status": "starting"}, 503, headers=_NO_STORE)
        if state.stopped or manager.stats().closing:
            return JSONResponse({"status": "draining"}, 503, headers=_NO_STORE)
        if manager.limiter.status().degraded:
            # Redis lost: the instance still serves its running streams (and, with the
            # local policy, a share of new ones); say so without the details.
            return JSONResponse({"status": "degraded"}, 503, headers=_NO_STORE)
        return JSONResponse({"status": "ready"}, headers=_NO_STORE)

    # Every method routed here (the gateway's catch-all mount would answer a 404).
    return [
        Route("/healthz", healthz, methods=_EVERY_METHOD),
        Route("/readyz", readyz, methods=_EVERY_METHOD),
    ]


def _not_allowed(request: Request) -> Response:
    message = f"{request.method} is not allowed on {request.url.path}; use GET"
    return JSONResponse(
        {"error": {"code": "method_not_allowed", "message": message}},
        405,
        headers={"allow": "GET, HEAD"},
    )

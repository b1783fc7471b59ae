"""The inspection API's one error shape, and how its OpenAPI document declares answers.

:class:`AdminError` is every error answer (``{"error": {"code", "message"}}``);
:func:`install_error_handlers` turns FastAPI's and Starlette's own errors (404,
405, validation) into it. :func:`declared_error`, :data:`FEED_EVENT` and
:func:`errors_as_json` shape what the document says about those answers. No
routes here: they are :mod:`._admin`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from ._admin_models import ErrorBody

__all__ = [
    "FEED_EVENT",
    "STATUS_CODES",
    "AdminError",
    "declared_error",
    "errors_as_json",
    "install_error_handlers",
]

STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    422: "validation_error",
    429: "too_many_requests",
    503: "shutting_down",
}


class AdminError(Exception):
    """An error answer of the inspection API: ``{"error": {"code", "message"}}``.

    Args:
        status: the HTTP status.
        code: the stable code clients match on.
        message: what was wrong and what to do.
        headers: extra headers (``Retry-After``, ``WWW-Authenticate``).
    """

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def response(self, details: list[dict[str, object]] | None = None) -> JSONResponse:
        """The JSON answer."""
        error: dict[str, object] = {"code": self.code, "message": self.message}
        if details is not None:
            error["details"] = details
        return JSONResponse({"error": error}, status_code=self.status, headers=self.headers)


def _sse_event(names: list[str], data: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"enum": names},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": data,
            },
        },
    }


_STREAM_REF = {"$ref": "#/components/schemas/Stream"}
# One event of the feed, as the document declares it: its name and its JSON data.
FEED_EVENT: dict[str, Any] = {
    "oneOf": [
        _sse_event(
            ["snapshot"],
            {
                "type": "object",
                "required": ["reason", "streams"],
                "properties": {
                    "reason": {"enum": ["start", "overflow"]},
                    "streams": {"type": "array", "items": _STREAM_REF},
                },
            },
        ),
        _sse_event(["opened", "admitted", "closed"], _STREAM_REF),
        _sse_event(
            ["end"],
            {
                "type": "object",
                "required": ["reason"],
                "properties": {"reason": {"enum": ["manager_closed"]}},
            },
        ),
    ]
}


def declared_error(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    """An error response for ``responses=``: the error body, and Retry-After if sent."""
    declared: dict[str, Any] = {"model": ErrorBody, "description": description}
    if retry_after:
        declared["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before trying again.",
                "schema": {"type": "integer", "minimum": 0},
            }
        }
    return declared


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    """FastAPI's validation error in this API's shape: a message naming each field."""
    details: list[dict[str, object]] = []
    parts = []
    for error in exc.errors():
        raw_loc = list(error.get("loc", ()))
        loc = [str(part) for part in raw_loc]
        message = str(error.get("msg", ""))
        # Without "input": a rejected value may be something that should not be
        # echoed into logs or proxies (a token pasted in the wrong field).
        details.append({"loc": raw_loc, "msg": message, "type": error.get("type")})
        where = f"{loc[0]} {'.'.join(loc[1:])}".strip() if loc else "request"
        parts.append(f"{where}: {message}")
    text = "invalid request: " + "; ".join(parts) + " (see details; fix the request and retry)"
    return AdminError(422, "validation_error", text).response(details)


def errors_as_json(document: dict[str, Any]) -> dict[str, Any]:
    """Declare every error answer as the JSON it is.

    FastAPI puts a response's model under the route's media type, which for the
    events feed and the metrics is not JSON: their errors are JSON all the same.
    """
    schema = {"$ref": "#/components/schemas/ErrorBody"}
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                if int(status) >= 400:
                    response["content"] = {"application/json": {"schema": schema}}
    # FastAPI's own validation error shape, which this app never sends.
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return document


def _allowed_methods(router: APIRouter, request: Request) -> list[str]:
    """Every method the routes of the path that answers this URL take.

    A path with a GET and a DELETE route answers a 405 from one of them, whose own
    ``Allow`` would name only it. Only the first path that matches counts, as in
    the document: ``/streams/events`` (GET) also matches ``/streams/{stream_id}``.
    """
    allowed: set[str] = set()
    template: str | None = None
    for route in router.routes:
        methods = getattr(route, "methods", None)
        path = getattr(route, "path", None)
        if not methods or (template is not None and path != template):
            continue
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            template = path
            allowed |= set(methods)
    return sorted(allowed)


def install_error_handlers(app: FastAPI, router: APIRouter) -> None:
    """Every error as ``{"error": {"code", "message"}}``, FastAPI's own ones too."""

    async def admin_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, AdminError)
        return exc.response()

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return _validation_error(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = STATUS_CODES.get(exc.status_code, "http_error")
        if exc.status_code == 400:
            # FastAPI's only 400: a body it could not read as JSON (not UTF-8, say).
            # Bad JSON is a validation error (JSON it could decode but not parse is
            # one already): one code for both.
            return AdminError(
                422,
                "validation_error",
                f"invalid request: body: {exc.detail} (send a JSON object in UTF-8, "
                f"with content-type application/json)",
            ).response([{"loc": ["body"], "msg": str(exc.detail), "type": "body_unreadable"}])
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}; see openapi.json"
        elif exc.status_code == 405:
            allowed = _allowed_methods(router, request)
            headers = {**(exc.headers or {}), "Allow": ", ".join(allowed)}
            message = (
                f"{request.method} is not allowed on {request.url.path} (allowed: "
                f"{', '.join(allowed)}); see openapi.json"
            )
            return AdminError(405, code, message, headers).response()
        else:
            message = str(exc.detail)
        return AdminError(exc.status_code, code, message, exc.headers).response()

    async def server_error(request: Request, exc: Exception) -> Response:
        return AdminError(
            500,
            "internal_error",
            "the inspection API failed; see the server's logs and retry",
        ).response()

    app.add_exception_handler(AdminError, admin_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, server_error)

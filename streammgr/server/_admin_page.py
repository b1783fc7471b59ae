"""The admin dashboard: ``GET {prefix}/`` and its static files, shipped in the package.

The page is plain HTML, CSS and JavaScript modules under ``static/admin/`` (uPlot
vendored in ``static/admin/vendor/``) and the SSE parser both pages share
(``static/common/sse.js``, served here as ``static/sse.js``): no build step. It holds
no data, so it is served without the admin token; everything it shows it fetches
from the API with the token the operator types (kept in the tab's
``sessionStorage``). The app's Host and Origin check
(:class:`~streammgr.server.HostGuard`) applies to it like to every route. Every
answer here carries a strict Content-Security-Policy (scripts and styles from this
origin only: no inline script, no ``eval``) and ``X-Content-Type-Options: nosniff``.

This room only serves files: it must not read the manager nor know the API.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable

from fastapi import FastAPI
from fastapi.responses import Response

from ._admin_errors import AdminError
from ._page_files import shared_page_files

__all__ = ["PAGE_HEADERS", "add_page_routes"]

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""The dashboard's policy: its own scripts, styles and API only."""

PAGE_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    # Small files, served from memory: revalidating each time costs little and an
    # upgraded package never serves yesterday's script beside today's page.
    "cache-control": "no-cache",
}
"""The headers of the page and of each of its files."""

_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".LICENSE": "text/plain; charset=utf-8",
}


def _files(root: Traversable, under: str = "") -> dict[str, tuple[bytes, str]]:
    """Every file under ``root`` with a known type, by its path: read once."""
    found: dict[str, tuple[bytes, str]] = {}
    for entry in root.iterdir():
        path = f"{under}{entry.name}"
        if entry.is_dir():
            found.update(_files(entry, f"{path}/"))
            continue
        suffix = entry.name[entry.name.rfind(".") :] if "." in entry.name else ""
        media_type = _MEDIA_TYPES.get(suffix)
        if media_type is not None:
            found[path] = (entry.read_bytes(), media_type)
    return found


def add_page_routes(app: FastAPI, prefix: str) -> None:
    """Add ``GET {prefix}/`` (the dashboard) and ``GET {prefix}/static/{path}`` to ``app``.

    Outside the OpenAPI document and without authentication (the files hold no
    data); the app's middleware (the Host and Origin check) still applies. A path
    that is not one of the shipped files is a 404 ``not_found``.

    Args:
        app: the inspection API's app.
        prefix: its path prefix (``""`` or ``/name``).
    """
    files = _files(resources.files(__package__ or "streammgr.server") / "static" / "admin")
    index, _ = files.pop("index.html")
    for name, body in shared_page_files().items():
        files[name] = (body, _MEDIA_TYPES[name[name.rfind(".") :]])

    async def page() -> Response:
        return Response(index, media_type=_MEDIA_TYPES[".html"], headers=PAGE_HEADERS)

    async def static(path: str) -> Response:
        found = files.get(path)
        if found is None:
            raise AdminError(
                404,
                "not_found",
                f"no dashboard file {path!r}: the page at {prefix}/ names the files it needs",
            )
        body, media_type = found
        return Response(body, media_type=media_type, headers=PAGE_HEADERS)

    app.add_api_route(f"{prefix}/", page, methods=["GET"], include_in_schema=False)
    app.add_api_route(
        f"{prefix}/static/{{path:path}}", static, methods=["GET"], include_in_schema=False
    )

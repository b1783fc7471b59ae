"""The chat page's files and headers, without a browser (``chat_page_routes``, and
``/chat`` in the service): a strict CSP naming only this origin and a checked
``?gateway=``, nosniff, no inline script or style, only the page's own files served.
The page's behaviour in Chromium is tests/test_browser_chat.py's."""

from __future__ import annotations

import re

import httpx
import pytest
from starlette.applications import Starlette

from streammgr import StreamManager
from streammgr.server import ServiceOptions, build_service_app, chat_page_routes
from streammgr.server._chat_page import gateway_origin


def page_client(base_url: str = "http://127.0.0.1:8000") -> httpx.AsyncClient:
    app = Starlette(routes=chat_page_routes())
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)


def directives(policy: str) -> dict[str, list[str]]:
    """A CSP header as {directive: [sources]}."""
    parsed: dict[str, list[str]] = {}
    for part in policy.split(";"):
        name, *sources = part.split()
        parsed[name] = sources
    return parsed


async def test_the_page_forbids_inline_script_and_every_other_origin() -> None:
    async with page_client() as client:
        page = await client.get("/chat")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    policy = directives(page.headers["content-security-policy"])
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'", "ws://127.0.0.1:8000"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]
    # Nothing inline that the CSP would have to allow.
    html = page.text
    assert re.search(r"<script(?![^>]*\bsrc=)", html) is None
    assert "<style" not in html
    assert " style=" not in html
    assert re.search(r"\son[a-z]+=", html) is None  # no inline event handler


async def test_a_checked_gateway_is_the_one_other_origin_the_page_may_reach() -> None:
    async with page_client("https://chat.example") as client:
        page = await client.get("/chat", params={"gateway": "HTTPS://Gw.Example:8443/prefix/"})
    assert page.status_code == 200
    policy = directives(page.headers["content-security-policy"])
    assert policy["connect-src"] == [
        "'self'",
        "wss://chat.example",
        "https://gw.example:8443",
        "wss://gw.example:8443",
    ]


@pytest.mark.parametrize(
    "gateway",
    [
        "javascript:alert(1)",
        "ftp://gw.example",
        "http://user:secret@gw.example",
        "http://gw.example/?q=1",
        "http://gw.example/#top",
        "http://gw.example; script-src *",
        "http://gw.example/'unsafe-inline'",
        "http://gw.example:80:80",
        "gw.example:8000",
        "",
    ],
)
async def test_a_gateway_that_is_not_a_plain_base_url_is_a_400(gateway: str) -> None:
    with pytest.raises(ValueError, match="gateway must be the gateway's http:// or https://"):
        gateway_origin(gateway)
    async with page_client() as client:
        page = await client.get("/chat", params={"gateway": gateway})
    assert page.status_code == 400
    assert "gateway must be" in page.text
    assert "content-security-policy" not in page.headers
    assert page.headers["x-content-type-options"] == "nosniff"


async def test_a_host_that_could_end_a_directive_is_left_out_of_the_policy() -> None:
    async with page_client() as client:
        page = await client.get("/chat", headers={"host": "evil.example; script-src *"})
    policy = directives(page.headers["content-security-policy"])
    assert policy["connect-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]


async def test_only_the_pages_files_are_served_each_with_its_type() -> None:
    async with page_client() as client:
        html = (await client.get("/chat")).text
        linked = re.findall(r'(?:src|href)="(chat/[^"]+)"', html)
        assert sorted(linked) == ["chat/chat.css", "chat/chat.js"]
        for name, kind in [
            ("chat.js", "text/javascript"),
            ("sse.js", "text/javascript"),
            ("chat.css", "text/css"),
        ]:
            answer = await client.get(f"/chat/{name}")
            assert answer.status_code == 200, name
            assert answer.headers["content-type"] == f"{kind}; charset=utf-8"
            assert answer.headers["x-content-type-options"] == "nosniff"
        assert 'from "./sse.js"' in (await client.get("/chat/chat.js")).text
        for missing in ("index.html", "other.js", "..%2Fchat.js"):
            assert (await client.get(f"/chat/{missing}")).status_code == 404, missing
        slash = await client.get("/chat/", params={"gateway": "http://gw.example"})
        assert slash.status_code == 308
        assert slash.headers["location"] == "/chat?gateway=http%3A%2F%2Fgw.example"


async def test_the_service_serves_the_page_to_its_allowed_hosts_only() -> None:
    manager = StreamManager()
    async with httpx.AsyncClient() as upstream:
        app = build_service_app(manager, upstream, ServiceOptions(upstream_url="http://up/v1"))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            assert (await client.get("/chat")).status_code == 200
            assert (await client.get("/chat/sse.js")).status_code == 200
            rebinding = await client.get("/chat", headers={"host": "evil.example"})
            assert rebinding.status_code == 403

"""The chat request's room (streammgr/server/_chat_request.py): what both chat routes
share, imported by them, importing neither."""

from __future__ import annotations

import ast
from pathlib import Path

import httpx
import pytest

from streammgr.server import ServiceOptions, _chat_request
from streammgr.sources import SourceTimeouts

SERVER = Path(_chat_request.__file__).parent


def imports_of(name: str) -> tuple[set[str], list[str]]:
    """The server modules ``name`` imports at its top, and any import inside a function."""
    tree = ast.parse((SERVER / f"{name}.py").read_text())
    top: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            top.add(node.module or "")
    nested = [
        f"line {inner.lineno}"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for inner in ast.walk(node)
        if isinstance(inner, (ast.Import, ast.ImportFrom))
    ]
    return top, nested


def test_the_chat_routes_share_the_request_room_without_a_circle() -> None:
    gateway, gateway_nested = imports_of("_gateway")
    socket, socket_nested = imports_of("_chat_ws")
    request, request_nested = imports_of("_chat_request")
    assert "_chat_request" in gateway
    assert "_chat_request" in socket
    assert "_gateway" not in socket, "_chat_ws must not import _gateway"
    assert not {"_gateway", "_chat_ws"} & request
    assert gateway_nested == socket_nested == request_nested == []


async def test_the_settings_are_frozen_and_derive_the_upstream_urls() -> None:
    async with httpx.AsyncClient() as client:
        check_settings(client)


def gateway_settings(
    client: httpx.AsyncClient, upstream_url: str, api_key: str
) -> _chat_request.GatewaySettings:
    return _chat_request.GatewaySettings(
        client,
        upstream_url=upstream_url,
        api_key=api_key,
        key_header=None,
        upstream_timeouts=SourceTimeouts(),
        answer_within=1.0,
        keep_alive=15.0,
        stall_timeout=30.0,
        max_request_size=1024,
    )


def check_settings(client: httpx.AsyncClient) -> None:
    settings = gateway_settings(client, "https://upstream.test/v1?api-version=1", "sk-gateway")
    assert settings.chat_url == "https://upstream.test/v1/chat/completions?api-version=1"
    assert settings.models_url == "https://upstream.test/v1/models?api-version=1"
    assert settings.secrets == ("sk-gateway",)
    assert settings.upstream_headers()["authorization"] == "Bearer sk-gateway"
    with pytest.raises(AttributeError):
        settings.api_key = "other"  # type: ignore[misc]


async def test_the_gateway_settings_never_show_the_upstream_key() -> None:
    # A repr lands in tracebacks with locals (structlog's console renderer shows them
    # when rich is installed), in debuggers and in logs: ServiceOptions hides the key,
    # and so must the settings built from it.
    key = "sk-upstream-Repr-7730"
    async with httpx.AsyncClient() as client:
        settings = gateway_settings(client, "https://upstream.test/v1?key=QueryKey-Repr-5521", key)
        shown = repr(settings)
    assert key not in shown
    assert "QueryKey-Repr-5521" not in shown  # a key written in the URL
    assert "upstream.test" in shown  # the rest is still there to debug with
    options = ServiceOptions(
        upstream_url="https://upstream.test/v1?key=QueryKey-Repr-5521", api_key=key
    )
    assert key not in repr(options)
    assert "QueryKey-Repr-5521" not in repr(options)

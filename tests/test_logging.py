"""Lifecycle logs: the events, their keys, and no secrets."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
import structlog
import trio
from structlog.testing import capture_logs

import streammgr
from streammgr import StreamManager

SECRET = "sk-test-0123456789abcdef"


async def test_lifecycle_events(autojump_clock: trio.abc.Clock) -> None:
    structlog.reset_defaults()

    async def producer() -> AsyncIterator[str]:
        yield "a"

    with capture_logs() as logs:
        async with StreamManager(max_streams=1, max_waiting=0) as manager:
            async with manager.open(producer, key="k", labels={"model": "m"}) as stream:
                with pytest.raises(streammgr.StreamLimitExceeded):
                    async with manager.open(producer, key="k2"):
                        pass  # pragma: no cover
                async for _ in stream:
                    pass
    events = [(entry["event"], entry.get("stream_id")) for entry in logs]
    other = next(entry for entry in logs if entry.get("key") == "k2")["stream_id"]
    assert events == [
        ("stream.opened", stream.id),
        ("stream.admitted", stream.id),
        ("stream.opened", other),
        ("stream.rejected", other),
        ("stream.closed", other),
        ("stream.closed", stream.id),
    ]
    opened, admitted = logs[0], logs[1]
    assert opened["key"] == "k"
    assert opened["labels"] == {"model": "m"}
    assert admitted["wait"] == 0
    rejected = logs[3]
    assert rejected["limit"] == "max_waiting"
    assert rejected["retry_after"] >= 1
    closed = logs[-1]
    assert closed["reason"] == "completed"
    assert (closed["items"], closed["bytes"]) == (1, 1)
    assert closed["error"] is None
    assert closed["log_level"] == "info"


async def test_no_secret_in_logs_errors_or_registry(autojump_clock: trio.abc.Clock) -> None:
    structlog.reset_defaults()

    async def producer() -> AsyncIterator[str]:
        yield "a"
        raise PermissionError(f"upstream rejected Authorization: Bearer {SECRET}")

    with capture_logs() as logs:
        async with StreamManager(secrets=[SECRET]) as manager:
            with pytest.raises(PermissionError):
                async with manager.open(producer) as stream:
                    async for _ in stream:
                        pass
    text = repr(logs) + repr(manager.history()) + repr(manager.stats()) + repr(stream)
    assert SECRET not in text
    assert "[REDACTED]" in text


def test_redact_patterns() -> None:
    assert streammgr.redact(f"Authorization: Bearer {SECRET}") == "Authorization: Bearer [REDACTED]"
    assert streammgr.redact(f"key {SECRET} leaked") == "key [REDACTED] leaked"
    assert streammgr.redact("https://x/?api_key=abc123&q=1") == "https://x/?api_key=[REDACTED]&q=1"
    assert streammgr.redact('{"password": "hunter2"}') == '{"password": "[REDACTED]"}'
    assert streammgr.redact("plain text stays") == "plain text stays"
    assert streammgr.redact("my token value", secrets=["token value"]) == "my [REDACTED]"


def test_redact_secrets_processor() -> None:
    event = {"event": "x", "authorization": "Bearer abc", "url": f"http://h/?token={SECRET}"}
    out = streammgr.redact_secrets(None, "info", event)
    assert out["authorization"] == "[REDACTED]"
    assert SECRET not in out["url"]


def test_import_does_not_configure_logging() -> None:
    code = "import structlog, streammgr, streammgr.sse; print(structlog.is_configured())"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_redact_secrets_looks_inside_containers() -> None:
    event = {
        "event": "x",
        "labels": {"tenant": "a", "api_key": "plain-secret", "note": f"Bearer {SECRET}"},
        "items": [f"token={SECRET}", ("ok",)],
    }
    out = streammgr.redact_secrets(None, "info", event)
    assert SECRET not in repr(out)
    assert "plain-secret" not in repr(out)
    assert out["labels"]["tenant"] == "a"
    assert out["items"][1] == ("ok",)


async def test_slow_producer_cleanup_is_logged_and_still_awaited(
    autojump_clock: trio.abc.Clock,
) -> None:
    structlog.reset_defaults()
    cleaned: list[float] = []

    async def stubborn() -> AsyncIterator[int]:
        try:
            while True:
                await trio.sleep(1)
                yield 1
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(60)  # a cleanup that ignores cancellation
            cleaned.append(trio.current_time())

    with capture_logs() as logs:
        async with StreamManager(cleanup_timeout=5) as manager:
            async with manager.open(stubborn) as stream:
                async for _ in stream:
                    break
            assert cleaned == [pytest.approx(61)]  # the block waited for the cleanup
    slow = [entry for entry in logs if entry["event"] == "stream.cleanup_slow"]
    assert len(slow) == 1
    assert slow[0]["stream_id"] == stream.id
    assert slow[0]["log_level"] == "warning"

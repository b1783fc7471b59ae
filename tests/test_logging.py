"""Lifecycle logs: the events, their keys, and no secrets."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import AsyncIterator

import hypothesis
import pytest
import structlog
import trio
from structlog.testing import capture_logs

import streammgr
from streammgr import StreamManager
from streammgr._logging import (
    _PATTERNS,
    MAX_ERROR_TEXT,
    _replace,
    describe_error,
    excerpt,
    get_logger,
    redact,
)

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


# -- redaction of encoded and overlapping secrets, and cuts ------------------------------

HEX_KEY = "0123456789abcdefGHIJ"  # no credential shape: only known, never guessed


def test_redact_finds_a_secret_in_any_encoding() -> None:
    text = (
        "sig=ab%2Bcd%2Fef%3D lower ab%2bcd%2fef%3d json ab+cd\\/ef= "
        "mixed ab%2Bcd/ef%3d plain ab+cd/ef="
    )
    assert streammgr.redact(text, ["ab+cd/ef="]) == (
        "sig=[REDACTED] lower [REDACTED] json [REDACTED] mixed [REDACTED] plain [REDACTED]"
    )
    # Form encoding writes a space as "+".
    assert streammgr.redact("q=my+pass+phrase", ["my pass phrase"]) == "q=[REDACTED]"


def test_redact_overlapping_secrets_leaves_no_remainder() -> None:
    # Replaced one after the other, the first would leave "ij" of the second.
    assert streammgr.redact("<abcdEFGHij>", ["abcdEFGH", "EFGHij"]) == "<[REDACTED]>"
    # The shorter one first would leave "EFGH" of the longer.
    assert streammgr.redact("<abcdEFGH>", ["abcd", "abcdEFGH"]) == "<[REDACTED]>"


def test_describe_error_cut_splits_no_marker() -> None:
    # Redacted, the secret's marker starts 5 characters before the cut (at 497).
    error = RuntimeError("x" * 478 + HEX_KEY + " rejected")
    text = describe_error(error, [HEX_KEY])
    assert text == "RuntimeError: " + "x" * 478 + "..."


@pytest.mark.parametrize("kept", [1, 4, 12, len(HEX_KEY) - 1])
def test_describe_error_cut_leaves_no_beginning_of_a_secret(kept: int) -> None:
    # The message quotes the beginning of a known secret, and the cut falls in it.
    error = RuntimeError("x" * (483 - kept) + HEX_KEY[:-1] + " and more" * 10)
    text = describe_error(error, [HEX_KEY])
    assert text == "RuntimeError: " + "x" * (483 - kept) + "..."
    assert len(text) <= MAX_ERROR_TEXT


@pytest.mark.parametrize("cut", range(1, 50))
def test_excerpt_never_leaves_a_fragment_at_the_cut(cut: int) -> None:
    key = "0123456789abcdef+/=0123456789abc"
    shown_whole = "x" * 20 + "[REDACTED] tail"
    percent = key.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    for written in (key, percent):
        body = "x" * 20 + written + " tail"
        # Redacted first, then cut: the marker is kept whole or dropped.
        shown = excerpt(body, 20 + cut, [key])
        assert shown_whole.startswith(shown)
        assert len(shown) == 20 or len(shown) >= 30
        # A text that is itself a cut (read up to a limit) loses a trailing fragment.
        partial = excerpt(body[: 20 + cut], 1000, [key], complete=False)
        assert partial == "x" * 20 or partial.startswith("x" * 20 + "[REDACTED]")


def test_excerpt_keeps_what_is_not_cut() -> None:
    assert excerpt(f"all of it {HEX_KEY}", 100, [HEX_KEY]) == "all of it [REDACTED]"
    assert excerpt("abcdefgh", 5, ["zzzz"], ellipsis="...") == "ab..."
    # Cut, "ab" ends with the first character of a secret: it goes too.
    assert excerpt("abcdefgh", 5, ["bzzz"], ellipsis="...") == "a..."
    # Not cut, nothing is taken away.
    assert excerpt("xyz b", 100, ["bzzz"]) == "xyz b"


# -- quiet by default: the standard library's logging when structlog is not configured -----


async def one_stream(secret: str = SECRET) -> None:
    """Open, admit and close one stream that fails with a secret in its error."""

    async def producer() -> AsyncIterator[str]:
        yield "a"
        raise PermissionError(f"upstream rejected Authorization: Bearer {secret}")

    async with StreamManager(secrets=[secret]) as manager:
        with pytest.raises(PermissionError):
            async with manager.open(producer, key="k", labels={"model": "m"}) as stream:
                async for _ in stream:
                    pass


async def test_configured_structlog_receives_the_events(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    structlog.reset_defaults()
    caplog.set_level(logging.INFO, logger="streammgr")
    with capture_logs() as logs:  # configures structlog
        await one_stream()
    assert [entry["event"] for entry in logs] == [
        "stream.opened",
        "stream.admitted",
        "stream.closed",
    ]
    assert caplog.records == []  # not both


async def test_unconfigured_structlog_logs_through_the_standard_library(
    autojump_clock: trio.abc.Clock,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    structlog.reset_defaults()
    caplog.set_level(logging.INFO, logger="streammgr")
    await one_stream()
    records = [record for record in caplog.records if record.name == "streammgr"]
    assert [record.getMessage().split()[0] for record in records] == [
        "stream.opened",
        "stream.admitted",
        "stream.closed",
    ]
    closed = records[-1]
    assert closed.levelno == logging.INFO
    assert closed.event == "stream.closed"  # type: ignore[attr-defined]
    assert closed.reason == "producer_error"  # type: ignore[attr-defined]
    assert closed.items == 1  # type: ignore[attr-defined]
    message = closed.getMessage()
    assert f"stream_id={closed.stream_id} key=k reason=producer_error" in message  # type: ignore[attr-defined]
    assert "error=" in message
    assert records[0].getMessage().endswith('labels={"model":"m"}')
    assert closed.filename == "_runner.py"  # the line that logged it, not the adapter
    assert SECRET not in repr([vars(record) for record in records])
    assert "[REDACTED]" in message
    assert capsys.readouterr() == ("", "")  # structlog's defaults did not print


async def test_unconfigured_info_is_silent_until_the_application_asks(
    autojump_clock: trio.abc.Clock,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    structlog.reset_defaults()
    caplog.set_level(logging.WARNING)  # the standard library's default level
    await one_stream()
    assert [record for record in caplog.records if record.name == "streammgr"] == []
    assert capsys.readouterr() == ("", "")


def test_stdlib_path_renders_nothing_for_a_disabled_level(caplog: pytest.LogCaptureFixture) -> None:
    structlog.reset_defaults()

    class Unprintable:
        def __repr__(self) -> str:
            raise AssertionError("rendered although the level is disabled")

        __str__ = __repr__

    log = get_logger().bind(stream_id="s-1")
    caplog.set_level(logging.WARNING, logger="streammgr")
    log.info("stream.opened", labels=Unprintable())
    assert caplog.records == []
    caplog.set_level(logging.INFO, logger="streammgr")
    log.info("x.y", url=f"http://h/?token={SECRET}", authorization="Bearer abc", text="a b")
    (record,) = caplog.records
    assert record.getMessage() == (
        'x.y stream_id=s-1 url="http://h/?token=[REDACTED]" authorization=[REDACTED] text="a b"'
    )
    assert record.url == "http://h/?token=[REDACTED]"  # type: ignore[attr-defined]
    log.warning("x.z", name="clashes with LogRecord.name")
    assert caplog.records[-1].name == "streammgr"
    assert caplog.records[-1].name_ == "clashes with LogRecord.name"  # type: ignore[attr-defined]


# Run in a fresh interpreter that configures nothing: what an embedding app sees.
QUIET_APP = """
import trio, trio.testing
import streammgr

async def producer():
    yield "a"

async def slow_cleanup():
    try:
        yield "a"
        await trio.sleep(1)
    finally:
        with trio.CancelScope(shield=True):
            await trio.sleep(60)

async def main():
    async with streammgr.StreamManager(cleanup_timeout=5) as manager:
        async with manager.open(producer) as stream:
            async for _ in stream:
                pass
        if WARN:
            async with manager.open(slow_cleanup) as stream:
                async for _ in stream:
                    break

trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
"""


def run_app(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )


def test_an_app_that_configures_nothing_sees_nothing() -> None:
    result = run_app("WARN = False\n" + QUIET_APP)
    assert (result.stdout, result.stderr) == ("", "")


def test_an_app_that_configures_nothing_sees_warnings_on_stderr() -> None:
    result = run_app("WARN = True\n" + QUIET_APP)
    assert result.stdout == ""
    # logging's last-resort handler: WARNING and above, the message only.
    (line,) = result.stderr.splitlines()
    assert line.startswith("stream.cleanup_slow stream_id=")
    assert line.endswith(" key=default waited=5")


def test_an_app_turns_the_events_on_with_logging() -> None:
    code = (
        "import logging, sys\n"
        "logging.basicConfig(stream=sys.stdout, format='%(name)s %(levelname)s %(message)s')\n"
        "logging.getLogger('streammgr').setLevel(logging.INFO)\n"
        "WARN = False\n" + QUIET_APP
    )
    lines = run_app(code).stdout.splitlines()
    assert [line.split()[:3] for line in lines] == [
        ["streammgr", "INFO", "stream.opened"],
        ["streammgr", "INFO", "stream.admitted"],
        ["streammgr", "INFO", "stream.closed"],
    ]
    assert "reason=completed" in lines[-1]


_WORDS = [
    "bearer ",
    "Basic ",
    "sk-",
    "PK-",
    "api_key=",
    "Api-Key: ",
    "token=",
    '"access_token": "',
    "SECRET:",
    "passwd=",
    "Authorization: ",
]


@hypothesis.settings(max_examples=300, derandomize=True, database=None, deadline=None)
@hypothesis.given(
    hypothesis.strategies.lists(
        hypothesis.strategies.one_of(
            hypothesis.strategies.sampled_from(_WORDS),
            hypothesis.strategies.text(min_size=0, max_size=12),
            hypothesis.strategies.text(alphabet="abcdefgh0123456789=:\"' -_", max_size=24),
        ),
        max_size=6,
    )
)
@hypothesis.example(["token=", "abcdefgh"])
@hypothesis.example(["x passwd=", "hunter22"])
@hypothesis.example(["Authorization: ", "abcdefgh"])
def test_the_credential_prefilter_never_changes_what_is_redacted(parts: list[str]) -> None:
    # redact() skips its regular expression for text without any of the words its
    # alternatives need: the result must be what the expression alone gives.
    text = "".join(parts)
    assert redact(text) == _PATTERNS.sub(_replace, text)

"""The command line: help, one-line errors with exit code 2, environment variables, and
``streammgr serve`` / ``streammgr simulate`` run as processes that answer and stop
gracefully on SIGINT (real time: every wait bounded)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import subprocess
import sys

import httpx
import pytest
import trio

from streammgr.cli import main
from streammgr.simulate import SimulatedUpstream

from .cli_helpers import PATIENCE, started
from .server_helpers import Server, wait_until


@pytest.mark.parametrize("command", [[], ["serve"], ["simulate"], ["demo"]])
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage: streammgr" in out
    if command == ["serve"]:
        for flag in ["--upstream-url", "--max-streams-per-key", "--cors-origin", "--log-format"]:
            assert flag in out
        assert "STREAMMGR_MAX_STREAMS" in out


@pytest.mark.parametrize(
    ("argv", "named", "accepts"),
    [
        (["serve", "--port", "abc"], "--port", "int"),
        (["serve", "--port", "70000"], "--port", "0 to 65535"),
        (["serve", "--max-streams", "0"], "--max-streams", "a positive int or none"),
        (["serve", "--max-waiting", "-1"], "--max-waiting", "a non-negative int or none"),
        (["serve", "--acquire-timeout", "-2"], "--acquire-timeout", "positive, finite number"),
        (["serve", "--idle-timeout", "inf"], "--idle-timeout", "positive, finite number"),
        # The library's own check (streammgr/_options.py), not a copy that let it pass.
        (["serve", "--acquire-timeout", "0.0001"], "--acquire-timeout", "at least 0.001"),
        (["serve", "--shutdown-grace", "-1"], "--shutdown-grace", "at least 0"),
        (["serve", "--log-format", "xml"], "--log-format", "json"),
        (["serve", "--upstream-url", "api.openai.com"], "--upstream-url", "https://"),
        (["serve", "--cors-origin", "app.example"], "--cors-origin", "origin"),
        (
            ["serve", "--upstream-api-key-env", "STREAMMGR_TEST_UNSET"],
            "STREAMMGR_TEST_UNSET",
            "set",
        ),
        (["serve", "--no-such-flag"], "--no-such-flag", ""),
        (["simulate", "--port", "-1"], "--port", "0 to 65535"),
        (["demo", "--streams", "0"], "--streams", "at least 1"),
        (["bogus"], "bogus", "serve"),
    ],
)
def test_a_bad_value_is_a_one_line_error_naming_the_flag(
    argv: list[str], named: str, accepts: str, capsys: pytest.CaptureFixture[str]
) -> None:
    os.environ.pop("STREAMMGR_TEST_UNSET", None)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("streammgr: error: ")
    assert named in lines[0]
    assert accepts in lines[0]


def test_serve_refuses_an_exposed_admin_api_without_a_token(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("streammgr: error: refusing to serve the admin API on 0.0.0.0")
    assert "--admin-token" in line


@pytest.mark.parametrize("token", ["", " padded-token "])
def test_cli_bad_admin_token_is_a_one_line_usage_error(token: str) -> None:
    # check_exposure() lets it through on loopback; admin_app() then raises ValueError
    # inside run_serve: a traceback and exit code 1 (docs/cli.md: one line, exit 2).
    result = subprocess.run(
        [sys.executable, "-m", "streammgr", "serve", "--port", "0", "--admin-token", token],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        check=False,
        env={**os.environ, "STREAMMGR_LOG_FORMAT": "json"},
    )
    assert result.returncode == 2, result.stderr[-300:]
    assert "Traceback" not in result.stderr
    assert "--admin-token" in result.stderr


def test_environment_variables_set_flags(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STREAMMGR_MAX_STREAMS_PER_KEY", "zero")
    assert main(["serve"]) == 2
    assert "STREAMMGR_MAX_STREAMS_PER_KEY" in capsys.readouterr().err
    # A flag on the command line wins over the variable.
    monkeypatch.setenv("STREAMMGR_LOG_FORMAT", "xml")
    assert main(["serve", "--max-streams-per-key", "2", "--log-format", "json", "--help"]) == 0


def test_python_dash_m_runs_the_same_command_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streammgr", "serve", "--port", "x"],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        check=False,
    )
    assert result.returncode == 2
    assert "--port" in result.stderr


async def test_serve_answers_then_stops_gracefully_on_sigint(nursery: trio.Nursery) -> None:
    env = {"STREAMMGR_MAX_STREAMS": "3", "STREAMMGR_UPSTREAM_KEY_FOR_TEST": "sk-test-key-1234"}
    async with started(
        nursery, "serve", "--upstream-api-key-env", "STREAMMGR_UPSTREAM_KEY_FOR_TEST", **env
    ) as running:
        listening = await running.until("gateway.listening")
        urls = listening["urls"]
        assert isinstance(urls, list)
        url = str(urls[0])
        async with httpx.AsyncClient(timeout=PATIENCE) as client:
            body = {
                "model": "sim-small",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
                "streammgr_simulate": {"tokens": 3, "first_token_latency": 0, "token_latency": 0},
            }
            response = await client.post(f"{url}/v1/chat/completions", json=body)
            assert response.status_code == 200
            assert response.text.endswith("data: [DONE]\n\n")
            assert response.headers["x-request-id"]
            # The inspection API is mounted at /admin (loopback: no token needed).
            stats = await client.get(f"{url}/admin/stats")
            assert stats.status_code == 200
            assert stats.json()["closed_total"] >= 1
            assert (await client.get(f"{url}/admin/healthz")).status_code == 200
        starting = await running.until("gateway.starting")
        assert starting["max_streams"] == 3  # from STREAMMGR_MAX_STREAMS
        assert await running.stop() == 0
    assert not any("sk-test-key-1234" in json.dumps(event) for event in running.events)


async def test_simulate_serves_the_simulator_then_stops_on_sigint(nursery: trio.Nursery) -> None:
    async with started(nursery, "simulate", "--seed", "3") as running:
        running.events_stopped_name = "simulator.stopped"
        listening = await running.until("simulator.listening")
        urls = listening["urls"]
        assert isinstance(urls, list)
        url = str(urls[0])
        async with httpx.AsyncClient(timeout=PATIENCE) as client:
            models = await client.get(f"{url}/v1/models")
        assert [model["id"] for model in models.json()["data"]] == ["sim-small", "sim-large"]
        assert await running.stop() == 0


async def test_the_gateways_upstream_client_holds_a_connection_per_stream(
    nursery: trio.Nursery,
) -> None:
    # httpx's default pool holds 100 connections: the 101st stream of `streammgr
    # serve --max-streams 200` waited for the pool inside its slot, then failed.
    from streammgr.cli._run import upstream_client

    upstream = SimulatedUpstream(first_token_latency=0, token_latency=0)
    server = await Server().start(nursery, upstream)
    body = {
        "model": "sim-small",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "streammgr_simulate": {"fault": "stall_mid_stream", "fault_after": 1, "stall": 60},
    }
    held = trio.Event()
    answered = 0

    async def hold(client: httpx.AsyncClient) -> None:
        nonlocal answered
        async with client.stream("POST", f"{server.url}/v1/chat/completions", json=body) as answer:
            answered += answer.status_code == 200  # the headers are in: the response is open
            await held.wait()

    streams = 120
    async with upstream_client(200, None) as client, trio.open_nursery() as holders:
        for _ in range(streams):
            holders.start_soon(hold, client)
        with contextlib.suppress(trio.TooSlowError):  # the asserts say what is missing
            await wait_until(
                lambda: upstream.stats().open >= streams and answered >= streams, patience=PATIENCE
            )
        assert upstream.stats().open == streams, upstream.stats()
        assert answered == streams
        held.set()
    server.stop.set()
    assert upstream.stats().max_open == streams


def _run_on(command: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streammgr", command, *argv, "--log-format", "console"],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        check=False,
    )


@pytest.mark.parametrize("command", ["serve", "simulate"])
def test_a_port_in_use_is_named_with_what_to_do(command: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run_on(command, "--port", str(port))
    assert result.returncode == 1
    assert f"127.0.0.1:{port} is already in use; choose another --port" in result.stderr
    assert "Traceback" not in result.stderr
    assert "sub-exception" not in result.stderr


def test_an_address_not_of_this_machine_is_named_with_what_to_do() -> None:
    result = _run_on("simulate", "--host", "192.0.2.1", "--port", "0")  # TEST-NET-1
    assert result.returncode == 1
    assert "192.0.2.1 is not an address of this machine; choose another --host" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("error", "host", "port", "expected"),
    [
        (
            OSError(errno.EADDRINUSE, "Address already in use"),
            "::1",
            8000,
            "[::1]:8000 is already in use; choose another --port",
        ),
        (
            PermissionError(errno.EACCES, "Permission denied"),
            "127.0.0.1",
            80,
            "permission denied to listen on 127.0.0.1:80: ports below 1024 need privileges; "
            "choose a --port of 1024 or more",
        ),
        (
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            "no-such-host.invalid",
            8000,
            "no-such-host.invalid does not resolve to an address (Name or service not known); "
            "choose another --host",
        ),
        (
            OSError(errno.EMFILE, "Too many open files"),
            "127.0.0.1",
            8000,
            "cannot listen on 127.0.0.1:8000: Too many open files",
        ),
    ],
)
def test_each_listen_error_says_what_to_do(
    error: OSError, host: str, port: int, expected: str
) -> None:
    from streammgr.cli._run import listen_error_message

    nested = BaseExceptionGroup("outer", [ExceptionGroup("inner", [error])])
    assert listen_error_message(nested, host, port) == expected


async def test_serve_body_timeout_closes_a_stalled_request_with_a_408(
    nursery: trio.Nursery,
) -> None:
    async with started(nursery, "serve", STREAMMGR_BODY_TIMEOUT="0.5") as running:
        listening = await running.until("gateway.listening")
        urls = listening["urls"]
        assert isinstance(urls, list)
        port = int(str(urls[0]).rpartition(":")[2])
        async with await trio.open_tcp_stream("127.0.0.1", port) as client:
            await client.send_all(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\n"
                b"content-type: application/json\r\ncontent-length: 1000\r\n\r\n{"
            )
            received = b""
            with trio.fail_after(PATIENCE):
                while data := await client.receive_some(65536):
                    received += data
        assert received.startswith(b"HTTP/1.1 408 ")
        timed_out = await running.until("http.request_timeout")
        assert timed_out["body_timeout"] == 0.5
        assert await running.stop() == 0


def test_a_bad_body_timeout_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--body-timeout", "0"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "--body-timeout" in line
    assert "positive, finite number of seconds" in line

"""TLS and HTTP/2: ``serve(certfile=, keyfile=)``, ``serve_service`` and ``streammgr serve
--certfile --keyfile`` (a throwaway trustme CA), without a browser: ALPN picks h2, many
streams share one connection and each ends as its client leaves; a bad pair of flags or
files is a clear error (real time: every wait bounded)."""

from __future__ import annotations

import json
import socket
import ssl
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
import trustme
from starlette.applications import Starlette

from streammgr import CloseReason, StreamManager
from streammgr.cli import main
from streammgr.server import ServiceOptions, serve, tls_context

from .cli_helpers import started
from .cluster_helpers import cluster_args
from .fault_helpers import MESSAGES, expected_text
from .redis_helpers import RedisServer, redis_server
from .server_helpers import (
    GATEWAY_BASE,
    PATIENCE,
    TlsFiles,
    fast_upstream,
    read_until_closed,
    running_service,
    tls_files,
    wait_until,
)

__all__ = ["redis_server"]  # the fixture, used by name


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return tls_files(tmp_path)


def stalled_chat(tokens_before_stall: int) -> dict[str, object]:
    """A streaming chat that sends a few tokens, then nothing until its client leaves."""
    return {
        "model": "sim-small",
        "messages": MESSAGES,
        "stream": True,
        "streammgr_simulate": {
            "tokens": 50,
            "first_token_latency": 0,
            "token_latency": 0,
            "fault": "stall_mid_stream",
            "fault_after": tokens_before_stall,
        },
    }


async def test_https_negotiates_h2_and_streams_a_whole_answer(
    nursery: trio.Nursery, tls: TlsFiles
) -> None:
    manager = StreamManager(max_streams=20)
    options = ServiceOptions(upstream_url=GATEWAY_BASE)
    async with running_service(
        nursery, manager, options, certfile=tls.certfile, keyfile=tls.keyfile
    ) as (server, upstream):
        assert server.url.startswith("https://127.0.0.1:")
        body = {"model": "sim-small", "messages": MESSAGES, "stream": True}
        expected = expected_text(upstream, body)
        async with httpx.AsyncClient(
            verify=tls.client_context(), http2=True, timeout=PATIENCE
        ) as client:
            health = await client.get(f"{server.url}/healthz")
            assert health.http_version == "HTTP/2"
            response = await client.post(f"{server.url}/v1/chat/completions", json=body)
            assert response.http_version == "HTTP/2"
            assert response.status_code == 200
            text = ""
            for line in response.text.splitlines():
                if line.startswith("data: {"):
                    delta = json.loads(line[6:])["choices"][0]["delta"]
                    text += delta.get("content") or ""
            assert text == expected
            assert response.text.endswith("data: [DONE]\n\n")
        async with httpx.AsyncClient(verify=tls.client_context(), timeout=PATIENCE) as plain:
            older = await plain.get(f"{server.url}/healthz")  # a client without h2
            assert older.http_version == "HTTP/1.1"
            assert older.status_code == 200


async def test_eight_streams_share_one_h2_connection_and_end_when_it_closes(
    nursery: trio.Nursery, tls: TlsFiles
) -> None:
    manager = StreamManager(max_streams=20, max_streams_per_key=20)
    options = ServiceOptions(upstream_url=GATEWAY_BASE)
    async with running_service(
        nursery,
        manager,
        options,
        upstream=fast_upstream(),
        certfile=tls.certfile,
        keyfile=tls.keyfile,
    ) as (server, upstream):
        # One connection at most: the 8 streams must be multiplexed on it.
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(
            verify=tls.client_context(), http2=True, timeout=PATIENCE, limits=limits
        ) as client:
            answered = 0
            all_answered = trio.Event()

            async def one_stream() -> None:
                nonlocal answered
                async with client.stream(
                    "POST", f"{server.url}/v1/chat/completions", json=stalled_chat(2)
                ) as response:
                    assert response.http_version == "HTTP/2"
                    assert response.status_code == 200
                    answered += 1
                    if answered == 8:
                        all_answered.set()
                    async for _ in response.aiter_bytes():  # until cancelled
                        pass

            with trio.fail_after(PATIENCE):
                async with trio.open_nursery() as clients:
                    for _ in range(8):
                        clients.start_soon(one_stream)
                    await all_answered.wait()
                    # Every stream is in flight at once, each past its first tokens.
                    # (Which chunks httpx hands over is not asserted: with eight
                    # HTTP/2 streams over TLS, httpx was seen to sit on one stream's
                    # data, against hypercorn alone too; the browser test checks the
                    # text of each.)
                    await wait_until(
                        lambda: [info.items >= 2 for info in manager.streams()] == [True] * 8
                    )
                    assert upstream.stats().open == 8
                    clients.cancel_scope.cancel()
        # httpx (httpcore) resets no HTTP/2 stream when a response is closed early: the
        # connection's close ends all eight (a browser resets each one; see
        # test_browser_chat.py).
        await wait_until(lambda: len(manager.history()) == 8)
        reasons = {info.close_reason for info in manager.history()}
        assert reasons == {CloseReason.CLIENT_DISCONNECTED}
        await wait_until(lambda: upstream.stats().open == 0)
        assert upstream.stats().client_left == 8


async def test_serve_refuses_half_a_pair_and_names_a_bad_file(
    tmp_path: Path, tls: TlsFiles
) -> None:
    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("never served")

    with pytest.raises(ValueError, match="certfile was given without keyfile"):
        await serve(app, port=0, certfile=tls.certfile)
    with pytest.raises(ValueError, match="keyfile was given without certfile"):
        await serve(app, port=0, keyfile=tls.keyfile)
    missing = tmp_path / "nope.pem"
    with pytest.raises(ValueError, match=r"keyfile '.*nope\.pem' cannot be read"):
        tls_context(tls.certfile, missing)
    # A key that is not the certificate's.
    other = trustme.CA().issue_cert("127.0.0.1")
    wrong_key = tmp_path / "other-key.pem"
    other.private_key_pem.write_to_path(str(wrong_key))
    with pytest.raises(ValueError, match="do not hold a PEM certificate and its"):
        tls_context(tls.certfile, wrong_key)
    # The certificate and key given the wrong way round.
    with pytest.raises(ValueError, match="keyfile its key"):
        tls_context(tls.keyfile, tls.certfile)
    assert isinstance(tls_context(tls.certfile, tls.keyfile), ssl.SSLContext)
    assert tls_context(tls.certfile, tls.keyfile).minimum_version >= ssl.TLSVersion.TLSv1_2


def test_the_command_line_refuses_half_a_pair_and_a_bad_file(
    tmp_path: Path, tls: TlsFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--certfile", str(tls.certfile)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "--certfile was given without --keyfile" in line
    missing = tmp_path / "missing.pem"
    assert main(["serve", "--certfile", str(missing), "--keyfile", str(tls.keyfile)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("streammgr: error: --certfile ")
    assert "missing.pem" in line
    assert "cannot be read" in line
    assert main(["serve", "--certfile", str(tls.keyfile), "--keyfile", str(tls.certfile)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert "--certfile" in line
    assert "--keyfile" in line


async def test_streammgr_serve_with_certificate_variables_speaks_h2(
    nursery: trio.Nursery, tls: TlsFiles
) -> None:
    env = {"STREAMMGR_CERTFILE": str(tls.certfile), "STREAMMGR_KEYFILE": str(tls.keyfile)}
    async with started(nursery, "serve", **env) as running:
        listening = await running.until("gateway.listening")
        urls = listening["urls"]
        assert isinstance(urls, list)
        url = str(urls[0])
        assert url.startswith("https://")
        async with httpx.AsyncClient(
            verify=tls.client_context(), http2=True, timeout=PATIENCE
        ) as client:
            body = {**stalled_chat(0), "streammgr_simulate": {"tokens": 3, "token_latency": 0}}
            response = await client.post(f"{url}/v1/chat/completions", json=body)
            assert response.http_version == "HTTP/2"
            assert response.text.endswith("data: [DONE]\n\n")
        assert await running.stop() == 0


async def test_every_worker_serves_tls_on_the_one_port(
    nursery: trio.Nursery, tls: TlsFiles, redis_server: RedisServer
) -> None:
    env = {"STREAMMGR_CERTFILE": str(tls.certfile), "STREAMMGR_KEYFILE": str(tls.keyfile)}
    argv = ["serve", "--workers", "2", *cluster_args(redis_server.url)]
    async with started(nursery, *argv, **env) as running:
        running.events_stopped_name = "workers.stopped"
        listening = await running.until("workers.listening")
        urls = listening["urls"]
        assert isinstance(urls, list)
        url = str(urls[0])
        assert url.startswith("https://")
        async with httpx.AsyncClient(
            verify=tls.client_context(), http2=True, timeout=PATIENCE
        ) as client:
            health = await client.get(f"{url}/healthz")
            assert health.http_version == "HTTP/2"
            assert health.status_code == 200
        assert await running.stop() == 0


async def test_a_client_that_never_shakes_hands_is_closed_at_the_body_timeout(
    nursery: trio.Nursery, tls: TlsFiles
) -> None:
    stop = trio.Event()
    (url,) = await nursery.start(
        partial(
            serve,
            Starlette(),  # no request ever comes
            port=0,
            body_timeout=0.5,
            shutdown_trigger=stop.wait,
            certfile=tls.certfile,
            keyfile=tls.keyfile,
        )
    )
    port = int(url.rpartition(":")[2])
    silent = await trio.open_tcp_stream("127.0.0.1", port)  # TCP only, no ClientHello
    started = trio.current_time()
    assert await read_until_closed(silent) == 0
    assert 0.4 <= trio.current_time() - started < PATIENCE  # hypercorn alone: 60 s
    stop.set()


async def test_a_tls_client_that_stops_reading_is_cut_off_as_stalled(
    nursery: trio.Nursery, tls: TlsFiles
) -> None:
    manager = StreamManager()
    options = ServiceOptions(upstream_url=GATEWAY_BASE, stall_timeout=0.2)
    async with running_service(
        nursery, manager, options, certfile=tls.certfile, keyfile=tls.keyfile
    ) as (server, upstream):
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small TCP window
        await sock.connect(("127.0.0.1", server.port))
        client = trio.SSLStream(
            trio.SocketStream(sock), tls.client_context(), server_hostname="127.0.0.1"
        )
        body = json.dumps(
            {
                "model": "sim-small",
                "messages": MESSAGES,
                "stream": True,
                "streammgr_simulate": {"tokens": 100000, "token_latency": 0},
            }
        ).encode()
        head = (
            "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        )
        await client.send_all(head.encode() + body)  # then reads nothing
        await wait_until(lambda: len(manager.history()) == 1)
        (info,) = manager.history()
        assert info.close_reason == CloseReason.CLIENT_STALLED
        # The connection was closed under hypercorn's shielded write (https_compatible:
        # no close_notify to wait for): the raw socket reaches its end.
        await read_until_closed(client.transport_stream)
        await wait_until(lambda: upstream.stats().open == 0)

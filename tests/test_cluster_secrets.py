"""The Redis URL's password in cluster mode: accepted as written, shown nowhere.

Hostile URLs: a percent-encoded password (the form the docs ask for when it holds
``@ / : ? #``), a password in the query string (``?password=``, which coredis
honours), and a password with an unencoded ``/`` or ``?`` that breaks the URL apart.
"""

from __future__ import annotations

import pathlib
import urllib.parse

import pytest

from streammgr.cli import main
from streammgr.cluster import RedisConnection
from streammgr.cluster._connection import RedisLost
from tests.redis_helpers import RedisServer


async def test_a_percent_encoded_password_is_decoded(tmp_path: pathlib.Path) -> None:
    """``redis://:p%40ss%2Fw%3Ard@host`` authenticates with ``p@ss/w:rd``."""
    password = "p@ss/w:rd#?x"
    server = RedisServer(tmp_path, password=password)
    server.start()
    try:
        url = f"redis://:{urllib.parse.quote(password, safe='')}@127.0.0.1:{server.port}/0"
        connection = RedisConnection(url, timeout=5)
        async with connection:
            assert await connection.run("return 1", [], []) == 1
        assert password in connection.secrets
    finally:
        server.kill()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "redis://127.0.0.1:6379/0?password=query-s3cret",
            "redis://127.0.0.1:6379/0?password=***",
        ),
        (
            "unix:///run/redis.sock?db=1&password=query-s3cret",
            "unix:///run/redis.sock?db=1&password=***",
        ),
        (
            "rediss://redis:6380/0?username=app&password=query%2Ds3cret",
            "rediss://redis:6380/0?username=app&password=***",
        ),
    ],
)
def test_a_password_in_the_query_is_hidden(url: str, shown: str) -> None:
    connection = RedisConnection(url)
    assert connection.url == shown
    assert "s3cret" not in repr(connection)
    assert "query-s3cret" in connection.secrets


async def test_a_query_password_stays_out_of_errors(tmp_path: pathlib.Path) -> None:
    server = RedisServer(tmp_path, password="right")
    server.start()
    try:
        url = f"redis://127.0.0.1:{server.port}/0?password=wrong-s3cret"
        with pytest.raises(RedisLost) as caught:
            async with RedisConnection(url, timeout=5):
                pass
        assert "wrong-s3cret" not in str(caught.value)
        assert "***" in str(caught.value)
    finally:
        server.kill()


@pytest.mark.parametrize(
    "url",
    ["redis://:hunt/er2@redis:6379/0", "redis://:hunt?er2@redis:6379/0", "redis://:hunt#er2@r"],
)
def test_an_unencoded_password_that_breaks_the_url_is_not_echoed(url: str) -> None:
    """The port parse fails on the password's first half: the message shows neither
    half, and says to percent-encode."""
    with pytest.raises(ValueError, match="percent-encode") as caught:
        RedisConnection(url)
    assert "hunt" not in str(caught.value)
    assert "er2" not in str(caught.value)


@pytest.mark.parametrize("url", ["redis://:hunt/er2@redis:6379/0", "redis://:hunt?er2@redis/0"])
def test_serve_refuses_a_broken_url_in_one_line(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not a traceback from the limiter (in every worker, with --workers): a usage
    error at once, the URL not shown."""
    assert main(["serve", "--redis-url", url]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "--redis-url" in line
    assert "percent-encode" in line
    assert "hunt" not in line
    assert "er2" not in line

"""The demo (the README's main job) runs, and every check it prints holds."""

from __future__ import annotations

import pytest
import trio

from streammgr._demo import run_demo


async def test_demo_checks_hold(
    autojump_clock: trio.abc.Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_demo(streams=60, seed=7) == 0
    output = capsys.readouterr().out
    assert "[FAILED]" not in output
    assert "[ok] limit never exceeded" in output
    assert "rejected (max_waiting)" in output
    assert "cancelled (idle_timeout)" in output
    assert "operator cancels tenant-d" in output
    assert "a complete answer (OpenAIChat + collect_chat)" in output

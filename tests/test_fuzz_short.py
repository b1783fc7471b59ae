"""A short run of each fuzz target in fuzz/, so that CI fails on what they catch.

Each target runs in a subprocess (libFuzzer exits the process on a crash) on a copy of
its seed corpus in fuzz/corpus/ (libFuzzer writes new inputs into the directory it is
given), for a bounded number of runs with a fixed seed. The corpus holds the inputs of
the bugs the fuzzers found, so a regression fails at once.

``STREAMMGR_FUZZ_SECONDS=600`` runs each target for that many seconds instead (the
long run of docs/sse.md, "Robustness"); a crashing input is then left in the
directory that ``STREAMMGR_FUZZ_ARTIFACTS`` names (default: the test's tmp dir).

atheris must be installed on Linux (it is in the ``dev`` extra there): this test fails,
never skips, without it, so that CI cannot pass without fuzzing. atheris has wheels for
Linux only; elsewhere the module is skipped, saying so.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
# Target, and runs of its short run: about two seconds each on an idle core.
TARGETS = [("fuzz_sse.py", "sse", 2000), ("fuzz_gateway_request.py", "gateway_request", 20000)]
SECONDS = int(os.environ.get("STREAMMGR_FUZZ_SECONDS", "0"))

if not sys.platform.startswith("linux"):
    pytest.skip(
        f"atheris ships Linux wheels only; on {sys.platform} install clang with libFuzzer "
        "and atheris by hand to fuzz",
        allow_module_level=True,
    )


def test_atheris_is_installed() -> None:
    if importlib.util.find_spec("atheris") is None:
        pytest.fail(
            f"atheris is not importable on Python {sys.version.split()[0]}: install the "
            "dev or fuzz extra (pip install -e '.[dev]'); the fuzz targets cannot run"
        )


@pytest.mark.timeout(SECONDS * 2 + 120 if SECONDS else 120)
@pytest.mark.parametrize(("target", "corpus", "runs"), TARGETS)
def test_a_short_fuzz_run_finds_nothing(
    tmp_path: Path, target: str, corpus: str, runs: int
) -> None:
    test_atheris_is_installed()
    seeds = FUZZ / "corpus" / corpus
    assert len(list(seeds.iterdir())) >= 5, f"the seed corpus {seeds} is missing"
    work = tmp_path / "corpus"
    shutil.copytree(seeds, work)
    artifacts = Path(os.environ.get("STREAMMGR_FUZZ_ARTIFACTS", tmp_path))
    budget = [f"-max_total_time={SECONDS}"] if SECONDS else [f"-runs={runs}"]
    command = [
        sys.executable,
        str(FUZZ / target),
        *budget,
        "-seed=1",
        f"-artifact_prefix={artifacts}{os.sep}",
        str(work),
    ]
    done = subprocess.run(
        command,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=SECONDS * 2 + 100 if SECONDS else 100,
        check=False,
    )
    output = done.stdout + done.stderr
    crashes = sorted(path.name for path in artifacts.glob("crash-*"))
    assert done.returncode == 0, (
        f"{target} failed (exit {done.returncode}); inputs: {crashes}; replay one with "
        f"python fuzz/{target} <file>\n{output[-6000:]}"
    )
    assert "Done " in output, output[-3000:]  # libFuzzer's last line: it really ran
    assert not crashes

"""What a user installs works: the wheel and the sdist build, and ``streammgr serve`` runs
from the wheel installed in a fresh virtual environment.

As CI would: ``python -m build`` (the sdist, then the wheel built from it, each in an
isolated environment with the build-system's setuptools) on a copy of the source tree,
so the tree itself gets no ``build/`` or ``*.egg-info``. The wheel is then installed
with its ``server`` and ``cli`` extras into a new venv (pip fetches the dependencies
from the package index, as a user's install would: a dependency missing from
``pyproject.toml`` fails here), and the installed ``streammgr serve`` must answer.
Measured on the 2-core machine: build 12 s, install 19 s, serve ~1 s.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
# Left out of the copy: what a checkout may hold that is not source.
NOT_SOURCE = (
    ".git",
    ".venv",
    ".bench",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
)
PATIENCE = 60.0  # seconds for one step: a loaded 2-core CI machine


def clean_environment() -> dict[str, str]:
    """The environment without PYTHONPATH, so nothing but the venv provides streammgr."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def run(*command: str | Path, cwd: Path) -> str:
    """Run a command to its end; its combined output, or a failure showing it."""
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{output[-4000:]}"
    return output


def package_files() -> set[str]:
    """The files the wheel must ship: every module of every package, py.typed, and the
    pages' static files."""
    package = ROOT / "streammgr"
    files = {path for path in package.rglob("*.py") if "__pycache__" not in path.parts}
    files.add(package / "py.typed")
    files.update(path for path in (package / "server" / "static").rglob("*") if path.is_file())
    return {path.relative_to(ROOT).as_posix() for path in files}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(the wheel, the sdist, the build's output), built once from a copy of the tree."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    dist = work / "dist"
    output = run(sys.executable, "-m", "build", "--outdir", dist, source, cwd=work)
    (wheel,) = dist.glob("streammgr-*.whl")
    (sdist,) = dist.glob("streammgr-*.tar.gz")
    return wheel, sdist, output


@pytest.mark.timeout(300)
def test_the_build_has_no_license_warning(built: tuple[Path, Path, str]) -> None:
    # setuptools warned three times that `license = { text = "MIT" }` is deprecated.
    _, _, output = built
    assert "project.license" not in output
    assert "SetuptoolsDeprecationWarning" not in output


@pytest.mark.timeout(300)
def test_the_wheel_ships_every_package_typed_and_licensed(built: tuple[Path, Path, str]) -> None:
    wheel, _, _ = built
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata_name,) = [name for name in names if name.endswith(".dist-info/METADATA")]
        metadata = archive.read(metadata_name).decode()
    shipped = {name for name in names if name.startswith("streammgr/")}
    assert shipped == package_files()
    assert "License-Expression: MIT" in metadata.splitlines()
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    for extra in ("server", "cli", "testing"):
        assert f"Provides-Extra: {extra}" in metadata.splitlines()


@pytest.mark.timeout(300)
def test_the_sdist_is_the_source_release_with_its_tests(built: tuple[Path, Path, str]) -> None:
    _, sdist, _ = built
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    # Everything `python3 dev.py test` needs, so a packager can run the suite from it.
    for needed in (
        "pyproject.toml",
        "LICENSE",
        "README.md",
        "dev.py",
        "tests/conftest.py",
        "tests/server_helpers.py",
        "tests/test_packaging.py",
        "docs/testing.md",
        "fuzz/fuzz_sse.py",
        "benchmarks/_procs.py",
    ):
        assert needed in names
    assert package_files() <= names
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]


@pytest.mark.timeout(300)
def test_streammgr_serve_answers_from_the_installed_wheel(
    built: tuple[Path, Path, str], tmp_path: Path
) -> None:
    wheel, _, _ = built
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", f"{wheel}[server,cli]", cwd=tmp_path)
    location = run(python, "-c", "import streammgr; print(streammgr.__file__)", cwd=tmp_path)
    assert Path(location.strip()).is_relative_to(venv)  # not this checkout

    command = [str(venv / "bin" / "streammgr"), "serve", "--port", "0", "--log-format", "json"]
    with subprocess.Popen(
        command,
        cwd=tmp_path,
        env=clean_environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stderr is not None
        try:
            seen = []
            # Its log says where it listens (the test's timeout bounds the wait).
            for line in process.stderr:
                seen.append(line)
                if line.startswith("{") and json.loads(line)["event"] == "gateway.listening":
                    url = json.loads(line)["urls"][0]
                    break
            else:
                raise AssertionError(f"serve ended before listening:\n{''.join(seen)}")
            with httpx.Client(base_url=url, timeout=PATIENCE) as client:
                models = client.get("/v1/models")
                assert models.status_code == 200
                assert [model["id"] for model in models.json()["data"]] == [
                    "sim-small",
                    "sim-large",
                ]
                assert client.get("/admin/healthz").status_code == 200
                # The dashboard and its files come from the installed package.
                page = client.get("/admin", follow_redirects=True)
                assert page.status_code == 200
                assert page.url.path == "/admin/"
                assert "<title>streammgr dashboard</title>" in page.text
                for name in ("dashboard.js", "sse.js", "table.js", "vendor/uPlot.iife.min.js"):
                    assert client.get(f"/admin/static/{name}").status_code == 200
                # The chat page's files are in the wheel (package data).
                page = client.get("/chat")
                assert page.status_code == 200
                assert '<script type="module" src="chat/chat.js">' in page.text
                for name in ("chat.js", "sse.js", "chat.css"):
                    assert client.get(f"/chat/{name}").status_code == 200, name
                # Both pages serve the one SSE parser, static/common/sse.js.
                shared = (ROOT / "streammgr/server/static/common/sse.js").read_bytes()
                assert client.get("/admin/static/sse.js").content == shared
                assert client.get("/chat/sse.js").content == shared
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=PATIENCE) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=PATIENCE)

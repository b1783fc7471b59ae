#!/usr/bin/env python3
"""One entry point for a newcomer: set everything up, then run the gateway, the demo or the tests.

    python3 dev.py serve    # create .venv, install streammgr[server,cli], run the gateway
                            # in front of the built-in simulated upstream on 127.0.0.1:8000
    python3 dev.py top      # install streammgr[top], watch a running server's streams live
    python3 dev.py demo     # create .venv, install streammgr[cli], run the demo
    python3 dev.py test     # create .venv, install streammgr[dev], run ruff, mypy --strict, pytest
                            # (pytest includes the wheel and sdist check: tests/test_packaging.py;
                            # the cluster tests need redis-server and nginx, the browser
                            # tests Chromium: installed as root)
    python3 dev.py bench    # install the benchmark extras and run every benchmark

Needs only Python 3.11+ with pip and venv. Set-up is skipped when .venv is already
installed from the same pyproject.toml (a stamp file records its hash).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"


def run(*args: str | Path) -> None:
    """Run a command from the project root; stop with its exit code when it fails."""
    print("+", " ".join(str(a) for a in args), flush=True)
    completed = subprocess.run([str(a) for a in args], cwd=ROOT, check=False)
    if completed.returncode != 0:
        sys.exit(completed.returncode)


def setup(extras: str) -> None:
    """Create .venv and install the project with the given extras, unless already done."""
    if sys.version_info < (3, 11):  # noqa: UP036 - this script may run on any Python
        sys.exit(f"streammgr needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    stamp = VENV / f".installed-{extras or 'base'}-{digest}"
    if stamp.exists() and PYTHON.exists():
        return
    if not PYTHON.exists():
        print(f"+ creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    run(PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    target = f".[{extras}]" if extras else "."
    run(PYTHON, "-m", "pip", "install", "--quiet", "-e", target)
    stamp.touch()


# The real servers the tests run (Debian's packages): program -> (package, who needs it).
# The tests start their own on free ports and stop them; never the system services.
SERVERS = {
    "redis-server": ("redis-server", "the cluster tests (a real Redis)"),
    "nginx": ("nginx-light", "the cluster rig's tests (nginx as the load balancer)"),
    "chromium": ("chromium", "the browser tests (the dashboard and the chat page)"),
}


def _installed(program: str) -> bool:
    return shutil.which(program) is not None or Path(f"/usr/sbin/{program}").exists()


def ensure_servers() -> None:
    """Install the servers the tests need when missing and root may (CI: apt-get),
    else say how; their tests skip without them, and fail under CI=true."""
    missing = [program for program in SERVERS if not _installed(program)]
    if not missing:
        return
    if os.name == "posix" and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        packages = [SERVERS[program][0] for program in missing]
        for command in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        ):
            print("+", " ".join(command), flush=True)
            if subprocess.run(command, cwd=ROOT, check=False, env=env).returncode != 0:
                break
        missing = [program for program in missing if not _installed(program)]
    for program in missing:
        package, needed_by = SERVERS[program]
        print(
            f"! {program} is not installed: {needed_by} will be skipped; "
            f"install it (Debian: sudo apt-get install {package}) to run them",
            flush=True,
        )


def main() -> None:
    """Dispatch the sub-command named on the command line."""
    command = sys.argv[1] if len(sys.argv) > 1 else "serve"
    rest = sys.argv[2:]
    if command == "serve":
        setup("server,cli")
        # exec: Ctrl-C and SIGTERM reach the server itself, which shuts down gracefully.
        os.chdir(ROOT)
        os.execv(PYTHON, [str(PYTHON), "-m", "streammgr", "serve", *rest])
    elif command == "top":
        setup("top")
        os.chdir(ROOT)
        os.execv(PYTHON, [str(PYTHON), "-m", "streammgr", "top", *rest])
    elif command == "demo":
        setup("cli")
        run(PYTHON, "-m", "streammgr", "demo", *rest)
    elif command == "test":
        setup("dev")
        ensure_servers()
        run(BIN / "ruff", "check", ".")
        run(BIN / "ruff", "format", "--check", ".")
        run(BIN / "mypy", "--strict", "streammgr", "benchmarks", "fuzz")
        run(BIN / "mypy", "tests")
        run(PYTHON, "-m", "pytest", "-q", *rest)
    elif command == "bench":
        setup("dev,bench")
        for script in sorted((ROOT / "benchmarks").glob("bench_*.py")):
            run(PYTHON, script, *rest)
    else:
        sys.exit(f"unknown command {command!r}: use serve, top, demo, test or bench")


if __name__ == "__main__":
    main()

"""Every Python example in the README and docs/ runs as it is."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def examples() -> list[tuple[str, str]]:
    found = []
    for path in DOCS:
        for index, code in enumerate(BLOCK.findall(path.read_text())):
            if "trio.run(" in code or "streammgr" in code:
                found.append((f"{path.name}#{index}", code))
    return found


@pytest.mark.parametrize(("name", "code"), examples(), ids=[name for name, _ in examples()])
def test_example_runs(name: str, code: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stderr}"


PYTEST_CONFIG = re.compile(r"```toml\n(\[tool\.pytest\.ini_options\]\n.*?)```", re.DOTALL)


def pytest_examples() -> list[tuple[str, str, str]]:
    """(name, the test file, the pytest configuration the same page shows) for every
    Python example that is a pytest test file."""
    found = []
    for path in DOCS:
        text = path.read_text()
        configs = PYTEST_CONFIG.findall(text)
        for index, code in enumerate(BLOCK.findall(text)):
            if re.search(r"^(async )?def test_", code, re.MULTILINE):
                found.append((f"{path.name}#{index}", code, configs[0] if configs else ""))
    return found


def test_the_testing_guide_has_a_pytest_example() -> None:
    assert [name for name, _, _ in pytest_examples() if name.startswith("testing.md")]


@pytest.mark.parametrize(
    ("name", "code", "config"), pytest_examples(), ids=[name for name, _, _ in pytest_examples()]
)
def test_pytest_example_passes_in_a_fresh_project(
    name: str, code: str, config: str, tmp_path: Path
) -> None:
    """As a user pastes it: the page's test file and its configuration (a
    ``pyproject.toml``) in a directory of their own, outside this repository (so not
    under our conftest or our ini), with only the plugins a ``streammgr[testing]``
    install has: pytest-trio and streammgr's own."""
    assert config, f"{name}: the page shows no [tool.pytest.ini_options] the example needs"
    (tmp_path / "pyproject.toml").write_text(config)
    (tmp_path / "test_example.py").write_text(code)
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    plugins = ["-p", "pytest_trio.plugin", "-p", "streammgr.testing._plugin"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *plugins],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{name} failed in a fresh project:\n{output}"
    assert f"rootdir: {tmp_path}" in output  # its own project, not ours
    assert "configfile: pyproject.toml" in output
    assert "1 passed" in output


def test_readme_tells_browser_front_ends_about_cors_origin() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "--cors-origin" in readme
    assert "STREAMMGR_CORS_ORIGIN" in readme


@pytest.mark.parametrize("path", DOCS, ids=[path.name for path in DOCS])
def test_no_doc_promises_what_has_landed(path: Path) -> None:
    text = " ".join(path.read_text().split())  # sentences wrap across lines
    assert "when they land" not in text
    assert "come with the service issue" not in text


# `pip install` of streammgr by its bare name (with or without extras), which PyPI
# cannot satisfy: streammgr is installed from a clone (`./streammgr[...]`) or a git URL.
BY_NAME = re.compile(
    r"pip install (?:-e )?['\"]?streammgr(?:\[[a-z,]*\])?['\"]?(?! @)(?=[\s`'\"]|$)"
)


@pytest.mark.parametrize("path", DOCS, ids=[path.name for path in DOCS])
def test_no_doc_installs_streammgr_by_name_from_pypi(path: Path) -> None:
    assert BY_NAME.findall(path.read_text()) == []


def test_the_install_pattern_catches_the_pypi_form() -> None:
    assert BY_NAME.findall("run `pip install 'streammgr[server,cli]'` first")
    assert BY_NAME.findall("pip install streammgr\n")
    assert not BY_NAME.findall("pip install './streammgr[server,cli]'")
    assert not BY_NAME.findall("pip install 'streammgr[server,cli] @ git+https://h/o/streammgr'")

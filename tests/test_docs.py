"""Every Python example in the README and docs/ runs as it is."""

from __future__ import annotations

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

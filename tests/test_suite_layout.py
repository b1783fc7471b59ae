"""The test suite's own layout, so that a maintainer finds a test by its feature.

Test files are named after what they test, never after the trial or review that found
a bug; tests/README.md lists every one (and every helper module), and names no file
that is gone; a module imports shared helpers from a helper module, never from a test
file; and no helper is written out twice across modules (two copies drift apart).
"""

from __future__ import annotations

import ast
import copy
import re
from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).parent

TRIAL_WORDS = ("hostile", "trial", "matrix", "stress", "issue", "regression", "review", "found")
"""Words that name how a bug was found rather than what a file tests."""

SMALLEST_COPY = 12
"""The fewest AST nodes a helper must have to count as copied (below that, two
helpers can be the same by chance: ``return None``)."""


def parsed(directory: Path) -> dict[str, ast.Module]:
    """Every Python module of ``directory``, parsed, by file name."""
    return {
        path.name: ast.parse(path.read_text(encoding="utf-8"), str(path))
        for path in sorted(directory.glob("*.py"))
    }


def imports_of_test_files(directory: Path) -> list[str]:
    """Each import of a test module by another module, as ``"a.py imports test_b"``."""
    found = []
    for name, tree in parsed(directory).items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                imported = [node.module or ""] if node.module else [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            else:
                continue
            for module in imported:
                if module.rpartition(".")[2].startswith("test_"):
                    found.append(f"{name} imports {module}")
    return found


def _fingerprint(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> str | None:
    """The helper's code without its name and docstring; ``None`` when it is too small."""
    bare = copy.deepcopy(node)
    bare.name = ""
    body = bare.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:] or [ast.Pass()]
    bare.body = body
    if sum(1 for statement in body for _ in ast.walk(statement)) < SMALLEST_COPY:
        return None
    return ast.dump(bare, include_attributes=False)


def copied_helpers(directory: Path) -> list[list[str]]:
    """Groups of top-level helpers (not tests) with the same code in two or more places,
    each place as ``"file.py:name"``."""
    places: defaultdict[str, list[str]] = defaultdict(list)
    for name, tree in parsed(directory).items():
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if node.name.startswith(("test_", "Test")):
                continue
            fingerprint = _fingerprint(node)
            if fingerprint is not None:
                places[fingerprint].append(f"{name}:{node.name}")
    return sorted(group for group in places.values() if len(group) > 1)


def trial_names(directory: Path) -> list[str]:
    """Test files whose names say how a bug was found rather than what they test."""
    return [
        path.name
        for path in sorted(directory.glob("test_*.py"))
        if any(word in path.stem for word in TRIAL_WORDS)
    ]


def readme_gaps(directory: Path) -> tuple[list[str], list[str]]:
    """Test and helper modules tests/README.md does not name, and files it names that
    do not exist."""
    readme = (directory / "README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(?:tests/)?([A-Za-z0-9_]+\.py)`", readme))
    present = {path.name for path in directory.glob("*.py")}
    listed = {name for name in present if name.startswith("test_") or name.endswith("_helpers.py")}
    return sorted(listed - named), sorted(named - present)


def test_no_module_imports_a_test_file() -> None:
    found = imports_of_test_files(TESTS)
    assert found == [], (
        f"{found}: move what is shared into a helper module (tests/<topic>_helpers.py) "
        "and import it from there"
    )


def test_no_helper_is_written_twice() -> None:
    copies = copied_helpers(TESTS)
    assert copies == [], (
        f"{copies}: keep one copy in a helper module (tests/<topic>_helpers.py) and "
        "import it where it is used"
    )


def test_test_files_are_named_after_a_feature() -> None:
    found = trial_names(TESTS)
    assert found == [], (
        f"{found}: name a test file after the feature it tests (tests/README.md lists them), "
        "or move its tests into that feature's file"
    )


def test_the_readme_lists_every_test_file_and_helper_module() -> None:
    missing, gone = readme_gaps(TESTS)
    assert missing == [], f"{missing}: add each to the table of its area in tests/README.md"
    assert gone == [], f"{gone}: tests/README.md names files that are gone; update it"

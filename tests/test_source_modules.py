"""The layout of ``streammgr/sources``: no import circle, no reading another file's privates.

A connection of an ``SSESource`` gets what it needs as one frozen
``ConnectionSettings``, so ``_http_connection`` neither imports ``_http`` (not even
under ``TYPE_CHECKING``) nor reaches into an ``SSESource``'s private attributes.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

SOURCES = Path(__file__).resolve().parent.parent / "streammgr" / "sources"


def sibling_imports(path: Path) -> set[str]:
    """The modules of the same package that ``path`` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module is not None:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def test_no_import_circle_between_source_modules() -> None:
    modules = {path.stem: path for path in SOURCES.glob("*.py")}
    graph = {name: sibling_imports(path) & modules.keys() for name, path in modules.items()}
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError on a circle
    assert "_http" not in graph["_http_connection"]


def test_the_connection_reads_no_private_attribute_of_another_object() -> None:
    tree = ast.parse((SOURCES / "_http_connection.py").read_text())
    reads = sorted(
        f"{ast.unparse(node.value)}.{node.attr} (line {node.lineno})"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and not (isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"})
    )
    assert reads == []

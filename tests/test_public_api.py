"""The public API: every exported name imports and is documented."""

from __future__ import annotations

import ast
import inspect
import re
import sys
from pathlib import Path

import pytest

import streammgr
import streammgr.cluster
import streammgr.server
import streammgr.simulate
import streammgr.sources
import streammgr.sse


@pytest.mark.parametrize(
    "module",
    [
        streammgr,
        streammgr.sse,
        streammgr.sources,
        streammgr.simulate,
        streammgr.server,
        streammgr.cluster,
    ],
)
def test_every_public_name_is_documented(module: object) -> None:
    names = module.__all__  # type: ignore[attr-defined]
    assert names, "empty __all__"
    for name in names:
        value = getattr(module, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"{name} has no docstring"
            for attribute, member in vars(value).items():
                if attribute.startswith("_") or not callable(member):
                    continue
                assert inspect.getdoc(member), f"{name}.{attribute} has no docstring"


def test_one_exception_tree() -> None:
    for name in [
        "StreamLimitExceeded",
        "StreamCancelled",
        "StreamTimeout",
        "ReaderTimeout",
        "IdleTimeout",
        "DeadlineExceeded",
        "ManagerClosed",
        "SSEError",
        "SSEEventTooLarge",
    ]:
        assert issubclass(getattr(streammgr, name), streammgr.StreamError), name
    assert issubclass(streammgr.IdleTimeout, streammgr.StreamCancelled)


def drawn_tree() -> dict[str, str | None]:
    """Each class drawn in ``_errors.py``'s docstring, with the class drawn above it."""
    from streammgr import _errors

    assert _errors.__doc__ is not None
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in _errors.__doc__.splitlines():
        match = re.match(r"^ {4}([ │├└─]*)([A-Z][A-Za-z]+)\b", line)
        if match is None:
            continue
        depth, name = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[name] = stack[-1][1] if stack else None
        stack.append((depth, name))
    return parents


def test_the_drawn_exception_tree_is_the_class_tree() -> None:
    from streammgr import _errors

    parents = drawn_tree()
    assert parents["StreamError"] is None
    classes = {
        name: value
        for name, value in vars(_errors).items()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == _errors.__name__
    }
    assert set(parents) == set(classes), "a class is missing from the drawing, or drawn twice"
    for name, parent in parents.items():
        if parent is not None:
            assert classes[name].__bases__ == (classes[parent],), (name, parent)


def test_every_exception_is_exported_and_documented() -> None:
    for name in drawn_tree():
        value = getattr(streammgr, name)
        assert name in streammgr.__all__, name
        assert inspect.getdoc(value), name


def test_sse_keeps_its_public_names() -> None:
    # What streammgr.sse exported when it was one module; RawSSEParser and RawBatch since.
    assert set(streammgr.sse.__all__) == {
        "OPENAI_DONE",
        "RawBatch",
        "RawSSEParser",
        "SSEParser",
        "ServerSentEvent",
        "encode",
        "encode_comment",
        "is_done",
    }
    for name in streammgr.sse.__all__:
        value = getattr(streammgr.sse, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__.startswith("streammgr.sse."), name


SSE_PACKAGE = Path(streammgr.sse.__file__).parent
# What the SSE package may import from streammgr: stdlib-only modules.
STDLIB_ONLY = {"_errors", "_states"}


@pytest.mark.parametrize(
    "path",
    [
        *sorted(SSE_PACKAGE.glob("*.py")),
        *(SSE_PACKAGE.parent / f"{name}.py" for name in sorted(STDLIB_ONLY)),
    ],
    ids=lambda path: f"{path.parent.name}/{path.name}",
)
def test_sse_imports_nothing_but_the_standard_library(path: Path) -> None:
    # Importing streammgr.sse runs streammgr/__init__.py (trio, httpx) first, so
    # sys.modules cannot tell: read the import statements instead.
    in_package = path.parent == SSE_PACKAGE
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.partition(".")[0]
                assert top in sys.stdlib_module_names, f"{path.name} imports {alias.name}"
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            where = f"{path.name}: from {'.' * node.level}{module} import ..."
            if node.level == 0:
                top = module.partition(".")[0]
                assert top == "__future__" or top in sys.stdlib_module_names, where
            elif in_package and node.level == 1:
                assert module.startswith("_"), where  # a sibling in streammgr/sse/
            else:
                parent_level = 2 if in_package else 1
                assert node.level == parent_level, where
                assert module in STDLIB_ONLY, where


PACKAGE = Path(streammgr.__file__).parent
SERVER_LIBRARIES = {"starlette", "hypercorn", "anyio", "fastapi", "pydantic", "prometheus_client"}


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda path: str(path.relative_to(PACKAGE))
)
def test_only_the_server_room_imports_the_asgi_toolkit(path: Path) -> None:
    # The extra is optional: `import streammgr` must work without it. The command line
    # (extra cli) composes the server's pieces, so it may import streammgr.server (it
    # does so inside the commands that need it), never Starlette or hypercorn itself.
    in_server = path.parent.name == "server"
    in_cli = path.parent.name == "cli"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.ImportFrom) and not in_server and node.module:
            names = [f"streammgr.{node.module}"] if node.module.startswith("server") else []
        for name in names:
            top = name.partition(".")[0]
            assert in_server or top not in SERVER_LIBRARIES, f"{path.name} imports {name}"
            assert in_server or in_cli or not name.startswith("streammgr.server"), path.name


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda path: str(path.relative_to(PACKAGE))
)
def test_only_the_cli_room_imports_the_cli_toolkit(path: Path) -> None:
    in_cli = path.parent.name == "cli"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            top = name.partition(".")[0]
            assert in_cli or top not in {"cyclopts", "rich"}, f"{path.name} imports {name}"


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda path: str(path.relative_to(PACKAGE))
)
def test_only_the_cluster_room_imports_coredis(path: Path) -> None:
    # The extra is optional, and one module maps coredis' errors.
    in_connection = path.parent.name == "cluster" and path.name == "_connection.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            assert in_connection or name.partition(".")[0] != "coredis", path.name

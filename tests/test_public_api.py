"""The public API: every exported name imports and is documented."""

from __future__ import annotations

import inspect

import pytest

import streammgr
import streammgr.sources
import streammgr.sse


@pytest.mark.parametrize("module", [streammgr, streammgr.sse, streammgr.sources])
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

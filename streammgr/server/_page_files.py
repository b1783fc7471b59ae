"""The files the server's two pages share (``static/common/``): one SSE parser,
``sse.js``, that the admin dashboard (``_admin_page.py``) and the chat page
(``_chat_page.py``) each serve beside their own files, as ``./sse.js``.

Each page serves it itself, since either may be mounted alone (``admin_app``,
``chat_page_routes()``); the one file keeps their parsers from drifting apart. This
room reads files: it must not know the pages.
"""

from __future__ import annotations

from importlib import resources

__all__ = ["SHARED_PAGE_FILES", "shared_page_files"]

SHARED_PAGE_FILES = ("sse.js",)
"""The names of the files both pages serve, each beside its own files."""


def shared_page_files() -> dict[str, bytes]:
    """Each shared file's bytes by name, read from the installed package.

    Raises:
        FileNotFoundError: a shared file is missing from the installed package.
    """
    folder = resources.files(__package__ or "streammgr.server").joinpath("static", "common")
    return {name: folder.joinpath(name).read_bytes() for name in SHARED_PAGE_FILES}

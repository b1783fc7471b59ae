"""What the secret-redaction tests share: the check that no fragment of a secret
survives anywhere, the free text of a manager's history to check it in, and finding
a secret whatever its spelling (plain, percent-encoded, JSON-escaped, or inside
base64, standard or URL-safe, at any alignment, also a piece of it cut short) with
an upstream that echoes the gateway's key in those forms.
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.parse

from streammgr import StreamManager


def recorded_text(manager: StreamManager) -> str:
    """The free text the history holds (key, labels, detail, error, notes): not its
    times and random hex ids, whose characters may spell 4 of a secret's by chance."""
    return repr(
        [
            (info.key, dict(info.labels), info.detail, info.error, dict(info.notes))
            for info in manager.history()
        ]
    )


def assert_no_fragment(secret: str, *texts: str) -> None:
    """No 4 characters in a row of ``secret`` survive in ``texts``."""
    for text in texts:
        for start in range(len(secret) - 3):
            assert secret[start : start + 4] not in text, (secret[start : start + 4], text)


FRAGMENT = 8
"""A run of this many characters of a secret counts as a leak."""

_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_\-]{12,}")


def _pieces(secret: str) -> set[str]:
    return {secret[at : at + FRAGMENT] for at in range(len(secret) - FRAGMENT + 1)}


def _decoded_runs(text: str) -> list[str]:
    """Every run of base64 characters in ``text``, decoded at each of the 4 alignments."""
    found = []
    for run in _BASE64_RUN.findall(text):
        standard = run.replace("-", "+").replace("_", "/")
        for shift in range(4):
            part = standard[shift:]
            part = part[: len(part) - len(part) % 4]
            try:
                found.append(base64.b64decode(part).decode("latin-1"))
            except (binascii.Error, ValueError):
                continue
    return found


def find_secret(secret: str, text: str) -> str | None:
    """The form in which ``text`` holds a piece of ``secret`` (``FRAGMENT`` characters
    or more), or ``None``."""
    pieces = _pieces(secret)
    forms = {
        "plain": text,
        "percent-decoded": urllib.parse.unquote_plus(text),
        "json-unescaped": text.replace("\\/", "/"),
    }
    for name, form in forms.items():
        if any(piece in form for piece in pieces):
            return name
    for decoded in _decoded_runs(text) + _decoded_runs(urllib.parse.unquote(text)):
        if any(piece in decoded for piece in pieces):
            return "base64"
    return None


def echoes(key: str) -> dict[str, str]:
    """Upstream error texts that echo ``key`` (the gateway's upstream key), by form."""
    header = f"Bearer {key}"
    return {
        "plain": f"invalid request; your header was Authorization: {header}",
        "bare key": f"key {key} may not list models",
        "base64 of Bearer <key>": "seen " + base64.b64encode(header.encode()).decode(),
        "base64 of the header": "seen "
        + base64.b64encode(f"Authorization: {header}".encode()).decode(),
        "url-safe base64": "seen " + base64.urlsafe_b64encode(f"x{header}".encode()).decode(),
        "url-encoded": "seen " + urllib.parse.quote(header, safe=""),
    }

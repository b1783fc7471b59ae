"""What the secret-redaction tests share: the check that no fragment of a secret
survives anywhere, and the free text of a manager's history to check it in.
"""

from __future__ import annotations

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

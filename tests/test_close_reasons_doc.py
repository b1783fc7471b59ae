"""docs/concepts.md lists every close reason, as ``/admin/stats`` reports them.

The table under "## Close reasons" must name exactly the members of
``CloseReason``, in the enum's order, so that the docs cannot fall behind again
(12 were listed while the enum, and so ``/admin/stats``, had 18).
"""

from __future__ import annotations

import re
from pathlib import Path

from streammgr import CloseReason

CONCEPTS = Path(__file__).resolve().parent.parent / "docs" / "concepts.md"


def documented_reasons() -> list[str]:
    """The first column of the table in the "Close reasons" section."""
    section = CONCEPTS.read_text().split("\n## Close reasons\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE)


def test_concepts_lists_every_close_reason_in_order() -> None:
    assert documented_reasons() == [reason.value for reason in CloseReason]

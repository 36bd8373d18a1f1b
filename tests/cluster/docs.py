"""The commands docs/scale-out.md shows for a cluster, read from the document itself: the cluster
tests run exactly these (with bash, their $VARIABLES from the test), so the document and the tests
cannot drift apart.

A tested command is a fenced block right after a line `<!-- tested: NAME -->`.
"""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "scale-out.md"
_BLOCK = re.compile(r"^<!-- tested: ([\w-]+) -->\n```\w*\n(.*?)^```", re.M | re.S)


def documented() -> dict[str, str]:
    """Every tested block of the document by name."""
    return {name: body for name, body in _BLOCK.findall(DOC.read_text())}


def command(name: str) -> str:
    """The block `name` of docs/scale-out.md (a test fails, naming it, if the document lost it)."""
    blocks = documented()
    assert name in blocks, f"docs/scale-out.md has no block marked <!-- tested: {name} -->"
    return blocks[name]

"""matplotlib for files, never a window: the stages run on servers and in CI, with no display."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg (file-only) backend, imported on first use (it takes a second)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Any, dpi: int = 120, tight: bool = True) -> None:
    """Write `fig` as a PNG atomically (a killed stage leaves no half-written file) and close it."""
    from alexnet.core.atomic import atomic_path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", **({"bbox_inches": "tight"} if tight else {}))
    pyplot().close(fig)

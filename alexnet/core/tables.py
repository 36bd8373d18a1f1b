"""Text tables for the commands' output: a pandas DataFrame printed without its index."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def format_table(table: Any, left: Sequence[str] = (), number: Callable[[float], str] = "{:.4f}".format) -> str:
    """`table` (a DataFrame) as text: `left` columns left-aligned (names, so indented members stay
    under their ensemble), numbers through `number`, missing values blank."""
    shown = table.copy()
    for column in left:
        width = max(len(column), int(shown[column].astype(str).map(len).max()))
        shown[column] = shown[column].map(lambda value, w=width: f"{value:<{w}}")
        shown = shown.rename(columns={column: column.ljust(width)})
    return shown.to_string(index=False, float_format=number, na_rep="")

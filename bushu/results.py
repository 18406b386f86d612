"""One result format for every command.

Results are frozen dataclasses. A result that reports a check is truthy when the check passed (the CLI exits 0 or 1
from ``bool(result)``); every result renders as text (``str``) and as JSON (``to_json``/``to_dict``).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from pathlib import Path
from typing import Any

import numpy as np


def to_jsonable(obj: Any) -> Any:
    """Convert dataclasses, numpy values, paths and enums to plain JSON values (NaN/inf become strings)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if hasattr(obj, "to_dict"):
            return obj.to_dict()
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.repr}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        return to_jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, float):
        if math.isnan(obj) or math.isinf(obj):
            return str(obj)
        return obj
    if isinstance(obj, (Path, enum.Enum)):
        return str(obj.value if isinstance(obj, enum.Enum) else obj)
    return obj


class Result:
    """Mixin for frozen result dataclasses: ``to_dict``, ``to_json``, and a ``kind`` tag for the HTML report."""

    kind: str = "result"

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: to_jsonable(getattr(self, f.name)) for f in dataclasses.fields(self) if f.repr}  # type: ignore[arg-type]
        return {"kind": self.kind, **d}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def render(self) -> str:
        """Multi-line text for the terminal; defaults to ``str(self)``."""
        return str(self)


def fmt_table(rows: list[list[Any]], header: list[str] | None = None) -> str:
    """A plain left-aligned text table."""
    cells = [[str(c) for c in r] for r in ([header] if header else []) + rows]
    if not cells:
        return ""
    ncol = max(len(r) for r in cells)
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(ncol)]
    if header:  # no dashes under a blank trailing header cell
        while widths and not header[len(widths) - 1].strip() and len(widths) > 1:
            widths[-1] = 0
            break
    lines = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in cells]
    if header:
        lines.insert(1, "  ".join("-" * w for w in widths).rstrip())
    return "\n".join(lines)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_count(n: float) -> str:
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"

"""``bushu.report``: one self-contained HTML file (inline CSS and SVG, no scripts, no network) from the JSON
results of the other commands.

``write_report(results, path)`` takes result objects or their dicts (what ``--json`` prints); ``report(paths,
output)`` reads JSON files. Known kinds (bench, profile, convert, compare, optimize, quantize, inspect, run) get
dedicated sections with tables and plots; any other kind a key/value table.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..errors import BushuError
from ..results import Result
from .html import page
from .sections import section


@dataclasses.dataclass(frozen=True)
class ReportResult(Result):
    """Where the report went; truthy (a report is written or an error raised)."""

    kind = "report"
    path: str
    sections: tuple[str, ...]  # the kinds rendered, in order

    def __str__(self) -> str:
        return f"report written to {self.path} ({len(self.sections)} sections: {', '.join(self.sections)})"


def _as_dict(r) -> dict:
    if isinstance(r, dict):
        return r
    if hasattr(r, "to_dict"):
        return json.loads(json.dumps(r.to_dict(), default=str))
    raise BushuError(f"cannot report a {type(r).__name__}: give results or the dicts their --json prints")


def write_report(results: Sequence, path: str | os.PathLike, *, title: str | None = None) -> ReportResult:
    """Render ``results`` (result objects or dicts; a dict holding ``results`` is expanded) into one HTML file at
    ``path``, written atomically."""
    dicts = []
    for r in results:
        d = _as_dict(r)
        dicts += [_as_dict(x) for x in d["results"]] if d.get("kind") is None and "results" in d else [d]
    if not dicts:
        raise BushuError("nothing to report: give at least one result")
    path = html_path(path)
    html = page(title or "bushu report", [section(d, i) for i, d in enumerate(dicts)], footer=f"bushu {__version__}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(html)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; the result is an ordinary file
    os.replace(tmp, path)
    return ReportResult(str(path), tuple(str(d.get("kind", "result")) for d in dicts))


def report(paths: Sequence[str | os.PathLike], output: str | os.PathLike, *, title: str | None = None) -> ReportResult:
    """Join the JSON results in ``paths`` (each one result, or a list of them) into one HTML report."""
    results = []
    for p in paths:
        try:
            data = json.loads(Path(p).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BushuError(f"no such file: {p}") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise BushuError(f"{p} is not JSON ({e}): give files written by a command's --json") from None
        items = data if isinstance(data, list) else [data]
        if not all(isinstance(x, dict) for x in items):
            raise BushuError(f"{p} holds no result objects: give files written by a command's --json")
        results += items
    return write_report(results, output, title=title)


def html_path(path: str | os.PathLike) -> Path:
    """``path`` when it names an .html file, else a one-line error (also checked when ``--report`` is parsed, so a
    wrong name is refused before the work, not after it)."""
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise BushuError(f"the report is HTML: give a .html path, not {path}")
    return path


def _report_arg(value: str) -> str:
    import argparse

    try:
        html_path(value)
    except BushuError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def add_report_argument(parser) -> None:
    """The ``--report OUT.html`` option, for any subcommand whose result the report renders."""
    parser.add_argument("--report", default=None, metavar="OUT.html", type=_report_arg,
                        help="also write an HTML report of the result")


def write_if_asked(args, *results) -> ReportResult | None:
    """Write ``results`` to ``args.report`` when the user gave ``--report``; a CLI module calls this in ``run``."""
    path = getattr(args, "report", None)
    return write_report(results, path) if path else None


__all__ = ["ReportResult", "add_report_argument", "report", "write_if_asked", "write_report"]

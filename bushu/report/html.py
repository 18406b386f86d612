"""The page and its building blocks: escaped tables, key/value tables, and the one self-contained document."""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:1.5em}h1,h2{overflow-wrap:anywhere}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:2em}h3{font-size:1.05em;margin-top:1.4em}
table{border-collapse:collapse;margin:8px 0;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}.note{color:#666;font-size:13px}
details{margin:8px 0}summary{cursor:pointer;color:#555}svg.plot{display:block;margin:8px 0;max-width:100%;height:auto}
code{background:#f4f4f4;padding:1px 4px}
"""


def cell(v: Any) -> str:
    """One table cell's text: numbers formatted, containers as compact JSON (shortened)."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list, tuple)):
        text = json.dumps(v, default=str)
        return text if len(text) <= 160 else text[:157] + "…"
    return str(v)


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    if not rows:
        return '<p class="note">(none)</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for r in rows:
        tds = []
        for v in r:
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            tds.append(f'<td{" class=num" if num else ""}>{escape(cell(v))}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def records(items: Sequence[dict], limit: int = 200) -> str:
    """A list of dicts as a table over the union of their keys (in first-seen order)."""
    keys: list[str] = []
    for it in items[:limit]:
        for k in it:
            if k not in keys and k != "kind":
                keys.append(k)
    rows = [[it.get(k) for k in keys] for it in items[:limit]]
    more = f'<p class="note">… {len(items) - limit} more</p>' if len(items) > limit else ""
    return table(rows, keys) + more


def kv(d: dict, skip: Sequence[str] = ()) -> str:
    """A generic key/value table of a result's fields (lists of records become nested tables)."""
    rows = []
    for k, v in d.items():
        if k in skip or k == "kind":
            continue
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            rows.append(f"<tr><th>{escape(k)}</th><td>{records(v)}</td></tr>")
        elif isinstance(v, dict) and v and any(isinstance(x, (dict, list)) for x in v.values()):
            rows.append(f"<tr><th>{escape(k)}</th><td>{kv(v)}</td></tr>")
        else:
            rows.append(f"<tr><th>{escape(k)}</th><td>{escape(cell(v))}</td></tr>")
    return f"<table>{''.join(rows)}</table>" if rows else ""


def verdict(ok: bool | None, yes: str = "PASS", no: str = "FAIL") -> str:
    if ok is None:
        return ""
    return f'<span class="{"pass" if ok else "fail"}">{yes if ok else no}</span>'


def page(title: str, sections: Sequence[str], footer: str = "") -> str:
    body = "\n".join(sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{CSS}</style></head><body><h1>{escape(title)}</h1>\n{body}\n"
            f'<p class="note">{escape(footer)}</p></body></html>\n')

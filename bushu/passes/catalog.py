"""``bushu optimize --list``: every pass with its one-line summary, what each level runs, and each --target adds."""

from __future__ import annotations

import dataclasses

from ..results import Result, fmt_table
from . import pipeline, registry


@dataclasses.dataclass(frozen=True)
class Catalog(Result):
    kind = "passes"
    passes: tuple[tuple[str, str, str], ...]  # (name, kind, summary)
    levels: dict[str, list[str]]
    targets: dict[str, list[str]]

    def __str__(self) -> str:
        return f"{len(self.passes)} passes; levels {', '.join(self.levels)}"

    def render(self) -> str:
        out = [fmt_table([list(p) for p in self.passes], ["pass", "kind", "what it does"]), ""]
        out += [f"{lvl}: {' '.join(names)}" for lvl, names in self.levels.items()]
        out += [f"--target {t}: + {' '.join(names)} (each kept only where measured faster)"
                for t, names in self.targets.items() if names]
        return "\n".join(out)


def catalog() -> Catalog:
    return Catalog(tuple((p.name, p.kind, p.summary) for p in registry.known()),
                   {k: list(v) for k, v in pipeline.LEVELS.items()}, {k: list(v) for k, v in pipeline.TARGETS.items()})

"""Accuracy budgets: how far a quantized model may be from the float one, measured on held-out feeds.

``parse("cosine>=0.99")`` → :class:`Budget`. Built-in metrics compare every output with the float model's over
the held-out feeds (the worst output and sample counts): ``cosine`` (≥), ``snr`` in dB (≥), ``maxabs`` (≤),
``top1-drop`` in percentage points of samples whose top-1 class changed (≤; classifier and CTC outputs). With a
user metric ``fn(run) -> float`` (higher is better), ``eval-drop`` bounds ``fn(float) - fn(quantized)``.

:func:`search` keeps the fewest, most sensitive layers in float until the budget is met.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..compare.metrics import Tolerance, diff, merge
from ..errors import BushuError
from ..results import Result
from ..search import first_true

_METRICS = {"cosine": ">=", "snr": ">=", "maxabs": "<=", "top1-drop": "<=", "eval-drop": "<="}


@dataclasses.dataclass(frozen=True)
class Budget:
    metric: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"

    def met(self, measured: float) -> bool:
        if math.isnan(measured):
            return False
        return measured >= self.value if self.op == ">=" else measured <= self.value


def parse(text: str) -> Budget:
    m = re.fullmatch(r"\s*([a-z0-9-]+)\s*(>=|<=)\s*([-+0-9.eE]+)\s*", text or "")
    if not m or m.group(1) not in _METRICS:
        raise BushuError(f"bad budget '{text}': write one of cosine>=0.99, snr>=30, maxabs<=0.1, top1-drop<=0.5, "
                         "eval-drop<=1 (with --eval)")
    metric, op, value = m.group(1), m.group(2), float(m.group(3))
    if op != _METRICS[metric]:
        raise BushuError(f"budget '{text}': {metric} takes '{_METRICS[metric]}', e.g. {metric}{_METRICS[metric]}{value:g}")
    return Budget(metric, op, value)


@dataclasses.dataclass(frozen=True)
class Accuracy(Result):
    """The quantized model against the float one on held-out feeds: the worst output's cosine, SNR and max-abs,
    top-1 agreement of score outputs (None when there are none), and the user's metric when given."""

    kind = "quant_accuracy"
    cosine: float
    snr_db: float
    max_abs: float
    top1: float | None
    samples: int
    eval_float: float | None = None
    eval_quantized: float | None = None

    def value(self, metric: str) -> float:
        if metric == "cosine":
            return self.cosine
        if metric == "snr":
            return self.snr_db
        if metric == "maxabs":
            return self.max_abs
        if metric == "top1-drop":
            if self.top1 is None:
                raise BushuError("top1-drop needs a classifier output (batch × classes): use cosine or snr instead")
            return 100.0 * (1.0 - self.top1)
        if self.eval_float is None or self.eval_quantized is None:
            raise BushuError("eval-drop needs --eval module.py:fn")
        return self.eval_float - self.eval_quantized

    def __str__(self) -> str:
        s = f"cosine {self.cosine:.5f}, SNR {self.snr_db:.1f} dB, max-abs {self.max_abs:.3g}"
        if self.top1 is not None:
            s += f", top-1 agreement {100 * self.top1:.2f}%"
        if self.eval_quantized is not None:
            s += f", eval {self.eval_quantized:.4g} (float {self.eval_float:.4g})"
        return s + f" on {self.samples} held-out feeds"


Outputs = Sequence[Mapping[str, np.ndarray]]


def accuracy(reference: Outputs, candidate: Outputs, *, eval_float: float | None = None,
             eval_quantized: float | None = None) -> Accuracy:
    per_output: dict[str, list] = {}
    for ref, cand in zip(reference, candidate):
        for name, b in ref.items():
            per_output.setdefault(name, []).append(diff(cand[name], b, name=name, tol=Tolerance(min_cosine=0.0)))
    merged = [merge(ds) for ds in per_output.values()]
    tops = [d.top1 for d in merged if d.top1 is not None]
    return Accuracy(cosine=min(d.cosine for d in merged), snr_db=min(d.snr_db for d in merged),
                    max_abs=max(d.max_abs for d in merged), top1=min(tops) if tops else None,
                    samples=len(reference), eval_float=eval_float, eval_quantized=eval_quantized)


def load_eval(spec: str) -> Callable:
    """``path/to/module.py:fn`` → the function (``fn(run) -> float``, higher is better)."""
    path, _, name = spec.rpartition(":")
    if not path or not name:
        raise BushuError(f"bad --eval '{spec}': write module.py:function")
    p = Path(path)
    if not p.is_file():
        raise BushuError(f"--eval: no such file {p}")
    modspec = importlib.util.spec_from_file_location(f"bushu_eval_{p.stem}", p)
    mod = importlib.util.module_from_spec(modspec)
    try:
        modspec.loader.exec_module(mod)  # the user's own code, by their request
    except Exception as e:
        raise BushuError(f"--eval: importing {p} failed: {type(e).__name__}: {_one_line(e)} (--debug shows where)"
                         ) from e
    fn = getattr(mod, name, None)
    if not callable(fn):
        raise BushuError(f"--eval: {p} has no function '{name}'")

    def metric(run) -> float:
        """The user's function, its failures named as theirs (not bushu's internal errors)."""
        try:
            value = fn(run)
        except BushuError:
            raise
        except Exception as e:
            raise BushuError(f"--eval {spec} raised {type(e).__name__}: {_one_line(e)} (--debug shows where)"
                             ) from e
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise BushuError(f"--eval {spec} returned {value!r}: it must return a number (higher is better)"
                             ) from None
        if not math.isfinite(value):
            raise BushuError(f"--eval {spec} returned {value}: it must return a finite number")
        return value

    return metric


def _one_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


@dataclasses.dataclass(frozen=True)
class Step:
    """One configuration the search tried."""

    float_layers: tuple[str, ...]
    value: float
    met: bool
    method: str = ""


def search(evaluate: Callable[[frozenset[str]], float], ranked: Sequence[str], budget: Budget,
           method: str = "") -> list[Step]:
    """Leave the ``k`` most sensitive layers of ``ranked`` in float, for ``k`` = 0, 1, 2, 4, … until the budget is
    met, then bisect down to the smallest such ``k``. Returns every step tried (the last passing one is the
    answer; none passes when even all layers in float don't), passing steps first, fewest float layers first."""
    steps: list[Step] = []
    tried: dict[int, Step] = {}

    def attempt(k: int) -> Step:
        if k not in tried:
            layers = tuple(ranked[:k])
            v = evaluate(frozenset(layers))
            tried[k] = Step(layers, v, budget.met(v), method)
            steps.append(tried[k])
        return tried[k]

    k, lo = 0, -1
    while not attempt(k).met:
        if k >= len(ranked):
            return steps
        lo, k = k, min(len(ranked), max(1, 2 * k))
    hi = first_true(lo, k, lambda i: attempt(i).met)
    attempt(hi)  # make sure the answer is recorded last among the passing ones
    steps.sort(key=lambda s: (not s.met, len(s.float_layers)))
    return steps

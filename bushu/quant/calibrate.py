"""Stream calibration feeds through the float model and observe the tensors a plan quantizes.

The model runs once per feed on ONNX Runtime with the observed tensors exposed as extra outputs; each output
updates a fixed-size :class:`~bushu.quant.observers.HistogramObserver` and is dropped, so memory does not grow with
the number of samples. Every feed is checked against the model's signature before it runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from ..engines.base import EngineOptions
from ..engines.ort import OrtEngine
from ..errors import BushuError
from ..inputs import Feed, check_feed
from ..progress import progress
from .convert import clone
from .observers import HistogramObserver


@dataclasses.dataclass
class Calibration:
    """Observers by tensor name, how many feeds were seen, and the first feeds kept back for evaluation.

    ``fit_observers`` saw every feed but the kept ones (``None`` when none were kept, or no other feed came): a
    choice scored on the kept feeds (``--method auto``) can then be made with ranges that never saw them."""

    observers: dict[str, HistogramObserver]
    samples: int
    heldout: list[Feed]
    fit_observers: dict[str, HistogramObserver] | None = None

    @property
    def state_bytes(self) -> int:
        return sum(o.nbytes for o in self.observers.values())


def exposed(model: ir.Model, names: Sequence[str]):
    """An ORT session of ``model`` that also returns the tensors ``names``."""
    copy = clone(model)
    values = {v.name: v for v in copy.graph.inputs}
    values.update({v.name: v for n in copy.graph for v in n.outputs})
    have = {v.name for v in copy.graph.outputs}
    missing = [n for n in names if n not in values]
    if missing:
        raise BushuError(f"tensors {', '.join(missing[:3])} are not in the model: re-plan after preparing it")
    copy.graph.outputs.extend(values[n] for n in names if n not in have)
    return OrtEngine().load(copy, EngineOptions(opt_level="basic"))


def calibrate(model: ir.Model, names: Sequence[str], feeds: Iterable[Mapping[str, np.ndarray]], *,
              heldout: int = 0, max_samples: int | None = None, show_progress: bool = True,
              total: int | None = None) -> Calibration:
    """Observe ``names`` over ``feeds``; the first ``heldout`` feeds are also kept (they are calibrated on too, and
    left out of :attr:`Calibration.fit_observers`)."""
    sess = exposed(model, names)
    obs = {n: HistogramObserver() for n in names}  # every feed after the kept ones
    held = {n: HistogramObserver() for n in names} if heldout else obs  # the kept ones (merged in at the end)
    kept: list[Feed] = []
    count = 0
    for i, feed in enumerate(progress(feeds, total=total, desc="calibrating", enabled=show_progress)):
        if max_samples is not None and count >= max_samples:
            break
        feed = {k: np.asarray(v) for k, v in feed.items()}
        check_feed(feed, sess.inputs, source=f"calibration sample {i}")
        outs = sess.run(feed, list(names))
        target = held if len(kept) < heldout else obs
        for n in names:
            target[n].update(outs[n])
        del outs
        if len(kept) < heldout:
            kept.append(feed)
        count += 1
    if count == 0:
        raise BushuError("the calibration data is empty: give at least one feed (ideally 100+ representative ones)")
    if not kept:
        return Calibration(obs, count, kept)
    for n in names:  # held becomes every feed; obs stays without the kept ones
        held[n].merge(obs[n])
    return Calibration(held, count, kept, obs if count > len(kept) else None)

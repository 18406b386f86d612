"""Pipelines: plain ordered lists of pass names, the names a user's ``--level/--passes/--skip`` select, and running
them to a fixed point (:func:`sweep`), each pass verified or rolled back (:func:`run_step`).

A name may appear more than once: a clean-up after the folds and fusions removes what they left behind.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import onnx_ir as ir

from ..errors import BushuError
from ..progress import progress
from . import registry
from .registry import PassContext
from .result import Step
from .verify import Verifier, first_divergent_node

MAX_ROUNDS = 6  # silero VAD with sr bound: nested Ifs inline one level per round (fold, then inline)

CLEANUP = [
    "shape-inference",
    "fold-constants",
    # NOTE: after fold-constants, which evaluates the conditions (e.g. sr == 16000 once sr is bound) but leaves Ifs.
    "inline-constant-if",
    # NOTE: after fold-constants, which leaves the shape vectors as Concats of dims and constants.
    "fold-shape-facts",
    "eliminate-no-ops",
    "eliminate-no-op-shapes",
    "dead-code",
    "cse",
    # NOTE: after CSE, which merges small equal Constant nodes first; lifted constants are then de-duplicated.
    "lift-constants",
    "dedup-initializers",
]

FOLDS = [
    # NOTE: after lift-constants: the folds need weights and BatchNorm statistics as initializers.
    "fold-batchnorm",
    "fold-conv-affine",
    "fold-pad",
    "reshape-chain",
    # NOTE: after fold-conv-affine, which takes a per-channel Mul/Add into the Conv before it could be merged here.
    "constant-chains",
]

FUSIONS = [
    # NOTE: fuse-softplus before fuse-mish, whose pattern starts from the Softplus the first one writes.
    "fuse-softplus",
    "fuse-mish",
    "fuse-hardswish",
    "fuse-gelu",
    "fuse-layernorm",
    "fuse-rmsnorm",
    "fuse-softmax",
]

LEVELS: dict[str, list[str]] = {
    "basic": [*CLEANUP, "shape-inference"],
    # NOTE: matmul-to-gemm after the fusions: a Gemm hides the MatMul+Add a LayerNorm/attention pattern would start
    # from. shape-inference last, so the values the rewrites created are typed: rerunning changes nothing.
    "extended": [*CLEANUP, *FOLDS, *FUSIONS, "matmul-to-gemm", "fold-constants", "dead-code", "shape-inference"],
    "all": [*CLEANUP, *FOLDS, *FUSIONS, "matmul-to-gemm", "fold-constants", "eliminate-no-ops", "dead-code", "cse",
            "dedup-initializers", "shape-inference"],
}

# Engine-specific fusions (``--target``), run once after the level's pipeline; each is verified and timed, and kept
# only where the target engine runs faster with it (:mod:`.ort_target`).
# NOTE: ort-shapes first: with the shapes known, ORT fuses more by itself, and the fusions after it are measured
# against that. ort-attention before ort-mha: Attention also packs the Q/K/V projections; MHA takes what it leaves.
TARGETS: dict[str, list[str]] = {
    "generic": [],
    "ort": ["ort-shapes", "ort-attention", "ort-mha"],
}


def split_names(names: str | Sequence[str] | None) -> list[str]:
    """``"a, b"`` or ``["a", "b"]`` → ``["a", "b"]``."""
    if names is None:
        return []
    if isinstance(names, str):
        names = names.split(",")
    return [n.strip() for n in names if n.strip()]


def select(level: str = "extended", passes: str | Sequence[str] | None = None,
           skip: str | Sequence[str] | None = None) -> list[str]:
    """The pass names to run: ``passes`` when given (in that order), else the level's pipeline, minus ``skip``.
    Unknown names raise a :class:`BushuError` that lists the known ones."""
    if level not in LEVELS:
        raise BushuError(f"unknown level '{level}': choose one of {', '.join(LEVELS)}")
    chosen = split_names(passes) or list(LEVELS[level])
    skipped = set(split_names(skip))
    for name in [*chosen, *skipped]:
        registry.get(name)
    return [n for n in chosen if n not in skipped]


def run_step(name: str, work: ir.Model, ctx: PassContext, verifier: Verifier | None, feeds) -> tuple[ir.Model, Step]:
    """Run one pass: in place without a ``verifier``; else on a copy sharing the weights, kept only when its
    outputs match the original's (rolled back, with the first divergent node, when not; a crash is rolled back too)."""
    info = registry.get(name)
    t0 = time.perf_counter()
    if verifier is None:
        count = info.run(work, ctx)
        return work, Step(name, count, time.perf_counter() - t0, "kept" if count else "unchanged")
    candidate = work.clone()
    try:
        count = info.run(candidate, ctx)
    except Exception as e:  # a pass bug must not lose the user's model: roll it back and say so
        return work, Step(name, 0, time.perf_counter() - t0, "crashed", f"{type(e).__name__}: {e}")
    if not count:
        return work, Step(name, 0, time.perf_counter() - t0, "unchanged")
    failure = verifier.check(candidate)
    if failure is None:
        return candidate, Step(name, count, time.perf_counter() - t0, "kept")
    where = first_divergent_node(work, candidate, feeds[0], verifier.tol) if failure.output else None
    return work, Step(name, count, time.perf_counter() - t0, "rolled back", failure.reason, where)


def sweep(names: list[str], work: ir.Model, ctx: PassContext, verifier: Verifier | None, feeds,
          show_progress: bool, on_change=None) -> tuple[ir.Model, list[Step]]:
    """Run the pipeline to a fixed point: rounds over ``names`` until one keeps nothing (so optimizing the output
    again is a no-op), at most ``MAX_ROUNDS``. A pass is skipped when it changed nothing at its last run and no
    pass has changed the model since: it would change nothing again (passes are functions of the model). A pass
    rolled back once is not retried: it is named once in the report. ``on_change()`` is called at the first kept
    step."""
    steps: list[Step] = []
    generation = 0  # how many kept steps so far
    clean: dict[str, int] = {}  # pass name -> the generation at which it last ran and changed nothing
    for round_ in range(MAX_ROUNDS):
        failed = {s.name for s in steps if s.status in ("rolled back", "crashed")}
        todo = [n for n in names if n not in failed]
        kept = 0
        for pass_name in progress(todo, total=len(todo), desc=f"optimize round {round_ + 1}", enabled=show_progress):
            if clean.get(pass_name) == generation:
                continue
            work, step = run_step(pass_name, work, ctx, verifier, feeds)
            steps.append(step)
            if step.status == "kept":
                if not generation and on_change is not None:
                    on_change()
                generation += 1
                kept += 1
            elif step.status == "unchanged":
                clean[pass_name] = generation
        if not kept:
            break
    return work, steps

"""Pipelines: plain ordered lists of pass names, and the names a user's ``--level/--passes/--skip`` select.

A name may appear more than once: a clean-up after the folds and fusions removes what they left behind.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import BushuError
from . import registry

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

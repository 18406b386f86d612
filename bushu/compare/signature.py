"""Signature checks before anything runs: every mismatch of names, dtypes and ranks, reported at once.

Two signatures are compatible when they have the same input and output names, and for each name the same dtype,
the same rank, and no static dim that differs (symbolic or unknown dims match anything). A mismatch raises one
:class:`~bushu.errors.BushuError` (exit code 2) that lists every mismatch, so the user fixes them in one go.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..engines.base import TensorSpec
from ..errors import BushuError


def _dims_differ(a: TensorSpec, b: TensorSpec) -> list[int]:
    return [i for i, (x, y) in enumerate(zip(a.shape, b.shape))
            if isinstance(x, int) and isinstance(y, int) and x >= 0 and y >= 0 and x != y]


def spec_mismatches(kind: str, ref: Sequence[TensorSpec], cand: Sequence[TensorSpec]) -> list[str]:
    """Human-readable mismatches between two lists of specs (``kind`` is ``input`` or ``output``)."""
    out = []
    r, c = {s.name: s for s in ref}, {s.name: s for s in cand}
    out += [f"{kind} '{n}' only in the reference" for n in r if n not in c]
    out += [f"{kind} '{n}' only in the candidate" for n in c if n not in r]
    for n in r.keys() & c.keys():
        a, b = r[n], c[n]
        if "unknown" not in (a.dtype, b.dtype) and a.dtype != b.dtype:
            out.append(f"{kind} '{n}' is {a.dtype} in the reference but {b.dtype} in the candidate")
        if a.shape is not None and b.shape is not None:
            if len(a.shape) != len(b.shape):
                out.append(f"{kind} '{n}' has rank {len(a.shape)} in the reference but {len(b.shape)} in the candidate")
            elif dims := _dims_differ(a, b):
                out.append(f"{kind} '{n}' is {a} in the reference but {b} in the candidate (dim {dims[0]})")
    return out


def check_signatures(ref_in: Sequence[TensorSpec], ref_out: Sequence[TensorSpec],
                     cand_in: Sequence[TensorSpec], cand_out: Sequence[TensorSpec]) -> None:
    """Raise one error listing every mismatch between the reference's and the candidate's signatures."""
    problems = spec_mismatches("input", ref_in, cand_in) + spec_mismatches("output", ref_out, cand_out)
    if problems:
        raise BushuError(f"the signatures don't match ({len(problems)} problem(s)): " + "; ".join(problems)
                         + ": compare models with the same inputs and outputs")


def golden_specs(arrays: Mapping[str, np.ndarray]) -> list[TensorSpec]:
    """Specs of saved golden outputs (their exact shapes)."""
    return [TensorSpec(k, str(np.asarray(v).dtype), tuple(np.shape(v))) for k, v in arrays.items()]

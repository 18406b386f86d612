"""The example inputs of an export: their ONNX names, which axes are dynamic, and fresh inputs of other sizes.

Example inputs are a tensor, a tuple/list of tensors (positional arguments of ``forward``) or a mapping of name →
tensor (keyword arguments). Positional inputs take their ONNX names from ``forward``'s parameters unless
``input_names`` says otherwise. Dynamic axes are given per input name, as ``{axis: dim_name}`` or a list of axes;
the same dim name on several inputs means one dimension (``batch`` on ``input_ids`` and ``attention_mask``).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import BushuError

# Sizes the verification tries along each dynamic dim, as functions of the example's size: one step up catches a
# graph fixed to the example's size, a doubling catches code that only holds for small sizes.
FRESH_SIZES = (lambda s: s + 1, lambda s: 2 * s + 1)


@dataclasses.dataclass(frozen=True)
class Example:
    """Normalised example inputs: ``args``/``kwargs`` for ``module(*args, **kwargs)`` and the ONNX input names in
    graph order (positional first, then keywords)."""

    args: tuple
    kwargs: dict
    names: tuple[str, ...]

    def tensors(self) -> dict[str, Any]:
        """Input name → tensor, in graph order."""
        return dict(zip(self.names, (*self.args, *self.kwargs.values())))

    def with_tensors(self, tensors: Mapping[str, Any]) -> Example:
        """The same call with other tensors (by name)."""
        n = len(self.args)
        args = tuple(tensors[name] for name in self.names[:n])
        kwargs = {k: tensors[k] for k in self.kwargs}
        return Example(args, kwargs, self.names)


def forward_params(module) -> list[str]:
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def normalize(module, example_inputs, input_names: Sequence[str] | None = None) -> Example:
    """Check the example inputs are tensors and name them (see the module docstring)."""
    import torch

    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if isinstance(example_inputs, Mapping):
        args, kwargs = (), dict(example_inputs)
    elif isinstance(example_inputs, (tuple, list)):
        args, kwargs = tuple(example_inputs), {}
    else:
        raise BushuError(
            f"example inputs are a {type(example_inputs).__name__}: pass a tensor, a tuple of tensors or a dict of "
            "name -> tensor"
        )
    if not args and not kwargs:
        raise BushuError("no example inputs: pass the tensors forward() takes (or --shape NAME:1x3x224x224)")
    params = forward_params(module)
    names = list(input_names or [])
    if len(names) > len(args):
        raise BushuError(f"{len(names)} input names for {len(args)} positional example inputs: give one per input")
    names += [params[i] if i < len(params) else f"input_{i}" for i in range(len(names), len(args))]
    names += list(kwargs)
    for name, t in zip(names, (*args, *kwargs.values())):
        if not isinstance(t, torch.Tensor):
            raise BushuError(f"example input '{name}' is a {type(t).__name__}, not a tensor: pass tensors only")
    if len(set(names)) != len(names):
        raise BushuError(f"input names repeat ({', '.join(names)}): give distinct input_names")
    return Example(args, kwargs, tuple(names))


def dynamic_axes(
    example: Example, dynamic: Mapping[str, Mapping[int, str] | Sequence[int]] | None, *, batch: bool = False
) -> dict[str, dict[int, str]]:
    """``{input: {axis: dim name}}``. A list of axes names axis 0 ``batch`` and others ``<input>_<axis>``;
    ``batch=True`` adds axis 0 of every input as ``batch``."""
    shapes = {n: tuple(t.shape) for n, t in example.tensors().items()}
    out: dict[str, dict[int, str]] = {}
    if batch:
        for name, shape in shapes.items():
            if not shape:
                raise BushuError(f"--dynamic-batch: input '{name}' is a scalar and has no batch axis")
            out[name] = {0: "batch"}
    for name, axes in (dynamic or {}).items():
        if name not in shapes:
            raise BushuError(f"dynamic axes for '{name}', which is not an input: the inputs are {', '.join(shapes)}")
        named = dict(axes) if isinstance(axes, Mapping) else {a: ("batch" if a == 0 else f"{name}_{a}") for a in axes}
        rank = len(shapes[name])
        for axis in list(named):
            if not -rank <= axis < rank:
                raise BushuError(f"input '{name}' has rank {rank}: axis {axis} can't be dynamic")
            named[axis % rank] = named.pop(axis)
        out.setdefault(name, {}).update(named)
    return out


def dim_sizes(example: Example, axes: Mapping[str, Mapping[int, str]]) -> dict[str, int]:
    """The example's size of every named dynamic dim; a dim name bound to two different sizes is refused."""
    sizes: dict[str, int] = {}
    tensors = example.tensors()
    for name, named in axes.items():
        for axis, dim in named.items():
            size = int(tensors[name].shape[axis])
            if sizes.setdefault(dim, size) != size:
                raise BushuError(
                    f"dynamic dim '{dim}' is {sizes[dim]} on one input but {size} on '{name}' axis {axis}: give the "
                    "two axes different names"
                )
    return sizes


def _like(t, shape: tuple[int, ...], rng: np.random.Generator):
    """A random tensor shaped ``shape`` whose values look like ``t``'s: integers within ``t``'s range (token ids
    stay valid, an all-ones mask stays all ones), floats with ``t``'s mean and spread, booleans at random."""
    import torch

    a = t.detach().cpu().numpy()
    if a.dtype == np.bool_:
        return torch.from_numpy(rng.random(shape) < 0.5)
    if np.issubdtype(a.dtype, np.integer):
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        return torch.from_numpy(rng.integers(lo, hi + 1, size=shape).astype(a.dtype))
    f = a.astype(np.float64)
    mean, std = (float(f.mean()), float(f.std())) if f.size else (0.0, 1.0)
    return torch.from_numpy((rng.standard_normal(shape) * (std or 1.0) + mean).astype(a.dtype))


def fresh_examples(
    example: Example, axes: Mapping[str, Mapping[int, str]], *, seed: int = 0
) -> list[tuple[str, Example]]:
    """``(label, inputs)`` with random values, one per size in :data:`FRESH_SIZES` along every dynamic dim at
    once (labelled like ``batch=3, sequence=13``); empty when no axis is dynamic."""
    sizes = dim_sizes(example, axes)
    if not sizes:
        return []
    rng = np.random.default_rng(seed)
    out = []
    for grow in FRESH_SIZES:
        new = {dim: grow(s) for dim, s in sizes.items()}
        tensors = {}
        for name, t in example.tensors().items():
            shape = list(t.shape)
            for axis, dim in axes.get(name, {}).items():
                shape[axis] = new[dim]
            tensors[name] = _like(t, tuple(shape), rng)
        out.append((", ".join(f"{d}={n}" for d, n in new.items()), example.with_tensors(tensors)))
    return out

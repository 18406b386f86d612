"""Feeds for a model: synthesized from its signature, or loaded from .npy/.npz files or a folder of them.

Synthesis is seeded and deterministic. Integer inputs get values in a valid range: token ids in ``[0, 1000)``
unless ``ranges`` says otherwise, attention masks all ones, token type ids zeros. Where the signature can't tell,
the user gives a fixed value (``values={"sr": 16000}``) or a range (``ranges={"input_ids": (0, 30522)}``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from .engines.base import TensorSpec
from .errors import BushuError

Feed = dict[str, np.ndarray]

DEFAULT_BATCH = 1
DEFAULT_DIM = 64


def parse_shape_args(items: Sequence[str] | None) -> dict[str, tuple[int, ...] | int]:
    """Parse ``--shape`` items: ``NAME:1x3x224x224`` binds an input's whole shape, ``DIM=8`` a symbolic dim."""
    out: dict[str, tuple[int, ...] | int] = {}
    for item in items or ():
        try:
            if ":" in item:
                name, dims = item.rsplit(":", 1)
                value: tuple[int, ...] | int = tuple(int(d) for d in re.split(r"[x,]", dims) if d)
            elif "=" in item:
                name, val = item.split("=", 1)
                value = int(val)
            else:
                raise ValueError
            if not name:
                raise ValueError
            out[name] = value
        except ValueError:
            raise BushuError(
                f"bad --shape '{item}': write INPUT:1x3x224x224 for an input or DIM=8 for a symbolic dim"
            ) from None
    return out


def parse_value_args(items: Sequence[str] | None) -> dict[str, float]:
    out = {}
    for item in items or ():
        name, _, val = item.partition("=")
        try:
            out[name] = float(val) if "." in val or "e" in val.lower() else int(val)
        except ValueError:
            raise BushuError(f"bad --value '{item}': write NAME=NUMBER, e.g. sr=16000") from None
    return out


def parse_range_args(items: Sequence[str] | None) -> dict[str, tuple[float, float]]:
    out = {}
    for item in items or ():
        name, _, rng = item.partition("=")
        try:
            lo, hi = (float(x) for x in rng.split(":"))
        except ValueError:
            raise BushuError(f"bad --range '{item}': write NAME=LOW:HIGH, e.g. input_ids=0:30522") from None
        out[name] = (lo, hi)
    return out


def resolve_shape(spec: TensorSpec, shapes: Mapping[str, tuple[int, ...] | int] | None = None) -> tuple[int, ...]:
    """A concrete shape for ``spec``: the user's binding for the input, else each symbolic dim by name, else
    1 for a leading (batch) dim and 64 for the others."""
    shapes = shapes or {}
    whole = shapes.get(spec.name)
    if isinstance(whole, tuple):
        if spec.shape is not None and len(whole) != len(spec.shape):
            raise BushuError(f"--shape {spec.name} has rank {len(whole)} but the model's input has rank {len(spec.shape)}")
        return whole
    if spec.shape is None:
        raise BushuError(f"input '{spec.name}' has no known rank: give its shape with --shape {spec.name}:1x3x224x224")
    dims = []
    for i, d in enumerate(spec.shape):
        if isinstance(d, int) and d >= 0:
            dims.append(d)
        elif isinstance(d, str) and isinstance(shapes.get(d), int):
            dims.append(int(shapes[d]))
        else:
            dims.append(DEFAULT_BATCH if i == 0 else DEFAULT_DIM)
    return tuple(dims)


def _int_kind(name: str) -> str:
    n = name.lower()
    if "mask" in n:
        return "mask"
    if "type" in n and "id" in n:
        return "zeros"
    return "ids"


def synthesize(
    specs: Sequence[TensorSpec],
    *,
    seed: int = 0,
    fill: str = "random",
    shapes: Mapping[str, tuple[int, ...] | int] | None = None,
    values: Mapping[str, float] | None = None,
    ranges: Mapping[str, tuple[float, float]] | None = None,
) -> Feed:
    """One feed for ``specs``. ``fill`` is ``random`` (floats ~ U[-1, 1) unless a range is given), ``zeros`` or
    ``ones``."""
    if fill not in ("random", "zeros", "ones"):
        raise BushuError(f"unknown fill '{fill}': choose random, zeros or ones")
    rng = np.random.default_rng(seed)
    values, ranges = values or {}, ranges or {}
    feed: Feed = {}
    for spec in specs:
        dtype = np.dtype(spec.dtype) if spec.dtype not in ("unknown", "bfloat16") else np.dtype("float32")
        shape = resolve_shape(spec, shapes)
        if spec.name in values:
            feed[spec.name] = np.full(shape, values[spec.name], dtype=dtype)
            continue
        if dtype == np.dtype(object):
            feed[spec.name] = np.array([f"sample {i}" for i in range(int(np.prod(shape)))], dtype=object).reshape(shape)
        elif fill == "zeros":
            feed[spec.name] = np.zeros(shape, dtype)
        elif fill == "ones":
            feed[spec.name] = np.ones(shape, dtype)
        elif dtype == np.bool_:
            feed[spec.name] = rng.random(shape) < 0.5
        elif np.issubdtype(dtype, np.integer):
            kind = _int_kind(spec.name)
            if spec.name in ranges:
                lo, hi = ranges[spec.name]
                feed[spec.name] = rng.integers(int(lo), int(hi), size=shape).astype(dtype)
            elif kind == "mask":
                feed[spec.name] = np.ones(shape, dtype)
            elif kind == "zeros":
                feed[spec.name] = np.zeros(shape, dtype)
            else:
                hi = min(1000, np.iinfo(dtype).max)
                feed[spec.name] = rng.integers(0, hi, size=shape).astype(dtype)
        else:
            lo, hi = ranges.get(spec.name, (-1.0, 1.0))
            feed[spec.name] = (rng.random(shape, dtype=np.float64) * (hi - lo) + lo).astype(dtype)
    # numpy returns a scalar, not an array, for shape (): engines want arrays (a scalar If condition, say)
    return {k: np.asarray(v) for k, v in feed.items()}


def synthesize_many(specs: Sequence[TensorSpec], n: int, *, seed: int = 0, **kw) -> list[Feed]:
    return [synthesize(specs, seed=seed + i, **kw) for i in range(n)]


def _load_file(path: Path, specs: Sequence[TensorSpec]) -> Feed:
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            if len(specs) == 1:
                return {specs[0].name: arr}
            name = path.stem
            if name not in {s.name for s in specs}:
                raise BushuError(
                    f"{path}: a .npy file feeds the input named like the file, but the model's inputs are "
                    f"{', '.join(s.name for s in specs)}: rename the file or use one .npz with all inputs"
                )
            return {name: arr}
    except (OSError, ValueError) as e:
        raise BushuError(f"could not read inputs from {path}: {e}") from None
    raise BushuError(f"{path}: inputs must be .npy or .npz files")


def load_feeds(path: str | Path, specs: Sequence[TensorSpec]) -> list[Feed]:
    """Feeds from a .npz (one feed), a .npy (for a single-input model, or named after its input), or a folder:
    every .npz in it is one feed; otherwise the .npy files named after the inputs make one feed."""
    path = Path(path)
    if not path.exists():
        raise BushuError(f"no such input file or folder: {path}")
    if path.is_dir():
        npz = sorted(path.glob("*.npz"))
        if npz:
            return [_load_file(p, specs) for p in npz]
        feed: Feed = {}
        for p in sorted(path.glob("*.npy")):
            feed.update(_load_file(p, specs))
        if not feed:
            raise BushuError(f"{path} holds no .npz or .npy files")
        return [feed]
    return [_load_file(path, specs)]


def iter_feeds(source, specs: Sequence[TensorSpec]) -> Iterator[Feed]:
    """Any source of feeds: a path, one feed (a mapping) or an iterable of feeds."""
    if isinstance(source, (str, Path)):
        yield from load_feeds(source, specs)
    elif isinstance(source, Mapping):
        yield dict(source)
    else:
        for f in source:
            yield dict(f)


def check_feed(feed: Mapping[str, np.ndarray], specs: Sequence[TensorSpec], source: str = "feed") -> None:
    """Refuse a feed whose names, dtypes or ranks don't match the signature, naming the mismatch."""
    names = {s.name for s in specs}
    missing = [n for n in names if n not in feed]
    extra = [n for n in feed if n not in names]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if extra:
            parts.append(f"unknown {', '.join(extra)}")
        raise BushuError(f"{source} doesn't match the model's inputs ({'; '.join(parts)}): the model takes "
                         + ", ".join(str(s) for s in specs))
    for s in specs:
        arr = np.asarray(feed[s.name])
        if s.dtype not in ("unknown",) and str(arr.dtype) != s.dtype and not (s.dtype == "object" and arr.dtype.kind in "OUS"):
            raise BushuError(f"{source}: input '{s.name}' is {arr.dtype} but the model wants {s.dtype}")
        if s.shape is not None and arr.ndim != len(s.shape):
            raise BushuError(f"{source}: input '{s.name}' has rank {arr.ndim} but the model wants {s}")
        if s.shape is not None:
            for i, (a, d) in enumerate(zip(arr.shape, s.shape)):
                if isinstance(d, int) and d >= 0 and a != d:
                    raise BushuError(f"{source}: input '{s.name}' has shape {arr.shape} but the model wants {s} (dim {i})")

"""Calibration sources, all streamed (one feed in memory at a time):

* a Python iterable of feeds (mappings of input name → array), e.g. a generator;
* a folder of ``.npz`` files (one feed each) or, for a single-input model, of ``.npy`` files;
* a folder of images with an :class:`ImagePreprocess` (resize, scale, mean/std, layout, channel order) given as
  arguments or a small YAML file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..engines.base import TensorSpec
from ..errors import BushuError, require
from ..inputs import Feed

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def parse_size(value, what: str = "--size") -> tuple[int, int]:
    """``224x224``, ``"48x192"`` or ``[48, 192]`` → (H, W)."""
    try:
        parts = value.lower().split("x") if isinstance(value, str) else list(value)
        h, w = (int(x) for x in parts)
    except (TypeError, ValueError):
        raise BushuError(f"bad {what} '{value}': write HxW, e.g. 224x224") from None
    if h <= 0 or w <= 0:
        raise BushuError(f"bad {what} '{value}': both sides must be positive, e.g. 224x224")
    return h, w


def parse_floats(value, what: str) -> tuple[float, ...]:
    """``0.5,0.5,0.5``, ``0.5`` or ``[0.5, 0.5, 0.5]`` → a tuple of floats."""
    try:
        if isinstance(value, str):
            return tuple(float(x) for x in value.split(",") if x.strip())
        if isinstance(value, (int, float)):
            return (float(value),)
        return tuple(float(x) for x in value)
    except (TypeError, ValueError):
        raise BushuError(f"bad {what} '{value}': write numbers separated by commas, e.g. 0.485,0.456,0.406"
                         ) from None


@dataclasses.dataclass(frozen=True)
class ImagePreprocess:
    """How an image file becomes an input: resize to ``size`` (H, W), ``x * scale``, ``(x - mean) / std`` per
    channel, ``channels`` order (``RGB``/``BGR``), ``layout`` (``NCHW``/``NHWC``), a batch dim of 1."""

    size: tuple[int, int] | None = None
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    channels: str = "RGB"
    layout: str = "NCHW"

    def __post_init__(self):
        if self.channels not in ("RGB", "BGR"):
            raise BushuError(f"channel order '{self.channels}' must be RGB or BGR")
        if self.layout not in ("NCHW", "NHWC"):
            raise BushuError(f"layout '{self.layout}' must be NCHW or NHWC")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s == 0 for s in self.std):
            raise BushuError("mean and std take three numbers each (std non-zero), e.g. --mean 0.485,0.456,0.406")

    @classmethod
    def from_yaml(cls, path: str | Path) -> ImagePreprocess:
        yaml = require("yaml", extra="zoo", feature="a preprocessing YAML file")
        p = Path(path)
        if not p.is_file():
            raise BushuError(f"no such preprocessing file: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            at = f" at line {where.line + 1}" if where is not None else ""
            raise BushuError(f"{p} is not valid YAML{at}: write one 'key: value' per line, e.g. 'size: 224x224'"
                             ) from None
        if not isinstance(data, dict):
            raise BushuError(f"{p}: expected 'key: value' lines (size, scale, mean, std, channels, layout)")
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise BushuError(f"{p}: unknown keys {', '.join(sorted(unknown))}: use size, scale, mean, std, channels, layout")
        # the same forms as the flags (size: 224x224, mean: 0.485,0.456,0.406) or YAML lists
        if "size" in data:
            data["size"] = parse_size(data["size"], f"{p}: size")
        for k in ("mean", "std"):
            if k in data:
                data[k] = parse_floats(data[k], f"{p}: {k}")
        if "scale" in data:
            data["scale"] = parse_floats(data["scale"], f"{p}: scale")[0]
        return cls(**data)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        from PIL import Image

        img = Image.fromarray(image).convert("RGB")
        if self.size is not None:
            img = img.resize((self.size[1], self.size[0]), Image.BILINEAR)
        x = np.asarray(img, np.float32) * self.scale
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.channels == "BGR":
            x = x[..., ::-1]
        if self.layout == "NCHW":
            x = x.transpose(2, 0, 1)
        return np.ascontiguousarray(x[None])


def _image_feeds(files: Sequence[Path], specs: Sequence[TensorSpec], pre: ImagePreprocess) -> Iterator[Feed]:
    from PIL import Image

    if len(specs) != 1:
        raise BushuError(f"images can calibrate a single-input model only; this one takes "
                         f"{', '.join(s.name for s in specs)}: give .npz feeds instead")
    for f in files:
        try:
            with Image.open(f) as im:
                arr = np.asarray(im.convert("RGB"))
        except OSError as e:
            raise BushuError(f"could not read image {f}: {e}") from None
        yield {specs[0].name: pre(arr).astype(specs[0].dtype if specs[0].dtype.startswith("float") else np.float32)}


def _array_feeds(files: Sequence[Path], specs: Sequence[TensorSpec]) -> Iterator[Feed]:
    for f in files:
        try:
            if f.suffix == ".npz":
                with np.load(f, allow_pickle=False) as z:
                    yield {k: z[k] for k in z.files}
            else:
                if len(specs) != 1:
                    raise BushuError(f"{f}: .npy files calibrate single-input models; use one .npz per feed")
                yield {specs[0].name: np.load(f, allow_pickle=False)}
        except (OSError, ValueError) as e:
            raise BushuError(f"could not read calibration feed {f}: {e}") from None


def _as_feeds(items: Iterable, specs: Sequence[TensorSpec]) -> Iterator[Feed]:
    """Each item as a feed: a mapping as is; for a single-input model a bare array; a tuple/list of arrays in the
    signature's order (what a DataLoader yields)."""
    names = [s.name for s in specs]
    for i, item in enumerate(items):
        if isinstance(item, Mapping):
            yield item
        elif isinstance(item, np.ndarray) and len(names) == 1:
            yield {names[0]: item}
        elif isinstance(item, (tuple, list)) and len(item) == len(names) and all(
                isinstance(a, np.ndarray) for a in item):
            yield dict(zip(names, item))
        else:
            raise BushuError(f"calibration sample {i} is a {type(item).__name__}: give each feed as a mapping "
                             f"{{{', '.join(repr(n) + ': array' for n in names)}}}"
                             + (" or a bare array" if len(names) == 1 else f" or a tuple of {len(names)} arrays"))


def feeds(source, specs: Sequence[TensorSpec], preprocess: ImagePreprocess | None = None
          ) -> tuple[Iterable[Feed], int | None]:
    """The feeds of ``source`` (a folder, a single .npz/.npy file, one feed, or an iterable of feeds) and how many
    there are when that is known without reading them."""
    if source is None:
        raise BushuError("quantization needs calibration data: give --calib FOLDER (.npz/.npy feeds or images)")
    if isinstance(source, Mapping):
        return [dict(source)], 1
    if isinstance(source, (str, Path)):
        p = Path(source)
        if not p.exists():
            raise BushuError(f"no such calibration data: {p}")
        files = sorted(x for x in p.iterdir() if x.is_file()) if p.is_dir() else [p]
        arrays = [f for f in files if f.suffix in (".npz", ".npy")]
        images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
        if arrays:
            return _array_feeds(arrays, specs), len(arrays)
        if images:
            if preprocess is None:
                raise BushuError(f"{p} holds images: say how to preprocess them (--size 224x224 --mean … --std …, "
                                 "or --preprocess spec.yaml)")
            return _image_feeds(images, specs, preprocess), len(images)
        raise BushuError(f"{p} holds no .npz, .npy or image files: the calibration set is empty")
    if isinstance(source, Iterable):
        return _as_feeds(source, specs), (len(source) if hasattr(source, "__len__") else None)
    raise BushuError(f"calibration data must be a folder, a file or an iterable of feeds, not {type(source).__name__}")

"""Where models come from: a Triton-layout folder, or a single ONNX file as a one-model repository.

Triton's layout::

    REPO/<model>/config.pbtxt          optional (see config.py)
    REPO/<model>/bushu.toml            optional: engine, threads
    REPO/<model>/<version>/model.onnx  versions are positive integers

Which versions are served follows the config's ``version_policy`` (Triton's default: the latest one). A
:class:`ModelSource` carries a fingerprint of its files so that polling can tell a changed model from an unchanged one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import BushuError
from .config import ModelDefaults, read_config


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """One model on disk: its config (a ``ModelConfig``), the versions to serve (version -> ONNX file), and a
    fingerprint of every file under it."""

    name: str
    folder: Path | None  # None for a single-file repository
    config: object = dataclasses.field(compare=False)
    versions: dict[str, Path] = dataclasses.field(default_factory=dict)
    configured: bool = False  # a config.pbtxt exists
    fingerprint: tuple = ()


def _fingerprint(root: Path) -> tuple:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return tuple((str(p.relative_to(root)), p.stat().st_mtime_ns, p.stat().st_size) for p in files)


def _pick_versions(cfg, available: dict[int, Path]) -> dict[str, Path]:
    policy = cfg.version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        chosen = sorted(available)
    elif kind == "specific":
        chosen = [v for v in policy.specific.versions if v in available]
    else:
        n = policy.latest.num_versions if kind == "latest" and policy.latest.num_versions else 1
        chosen = sorted(available)[-n:]
    return {str(v): available[v] for v in chosen}


class Repository:
    """A model repository at ``path`` (a folder in Triton's layout, or one ``.onnx`` file)."""

    def __init__(self, path: str | Path, defaults: ModelDefaults = ModelDefaults()):
        self.path = Path(path)
        self.defaults = defaults
        if not self.path.exists():
            raise BushuError(f"{self.path} does not exist: give an .onnx file or a model repository folder")
        if self.path.is_file() and self.path.suffix != ".onnx":
            raise BushuError(f"{self.path} is not an .onnx file: give an .onnx file or a model repository folder")
        if self.path.is_dir() and not self.names():
            raise BushuError(f"{self.path} holds no models: lay it out as {self.path}/<model>/1/model.onnx")

    @property
    def single_file(self) -> bool:
        return self.path.is_file()

    def names(self) -> list[str]:
        """The models in the repository (folders that hold a config.pbtxt or a numbered version folder)."""
        if self.single_file:
            return [self.path.stem]
        out = []
        for d in sorted(p for p in self.path.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if (d / "config.pbtxt").is_file() or any(v.is_dir() and v.name.isdigit() for v in d.iterdir()):
                out.append(d.name)
        return out

    def source(self, name: str) -> ModelSource:
        """Read model ``name`` from disk; a one-line error says what is missing."""
        if self.single_file:
            if name != self.path.stem:
                raise BushuError(f"unknown model '{name}': this repository serves only '{self.path.stem}'")
            cfg = read_config(self.path.parent / "__none__", name)
            st = self.path.stat()
            return ModelSource(name, None, cfg, {"1": self.path}, False, ((self.path.name, st.st_mtime_ns, st.st_size),))
        folder = self.path / name
        if name not in self.names():
            raise BushuError(f"unknown model '{name}': the repository has {', '.join(self.names()) or 'none'}")
        cfg = read_config(folder, name)
        filename = cfg.default_model_filename or "model.onnx"
        available = {int(v.name): v / filename for v in folder.iterdir()
                     if v.is_dir() and v.name.isdigit() and int(v.name) > 0 and (v / filename).is_file()}
        if not available:
            raise BushuError(f"model '{name}' has no version to serve: put the model at {folder}/1/{filename}")
        versions = _pick_versions(cfg, available)
        if not versions:
            raise BushuError(f"model '{name}': its version_policy selects none of the versions {sorted(available)}")
        return ModelSource(name, folder, cfg, versions, (folder / "config.pbtxt").is_file(), _fingerprint(folder))

    def fingerprint(self, name: str) -> tuple:
        """A cheap fingerprint of model ``name``'s files (empty when the model is gone)."""
        if self.single_file:
            if not self.path.exists():
                return ()
            st = self.path.stat()
            return ((self.path.name, st.st_mtime_ns, st.st_size),)
        folder = self.path / name
        return _fingerprint(folder) if folder.is_dir() else ()

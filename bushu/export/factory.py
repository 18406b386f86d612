"""Where the CLI gets a module: ``path/to/file.py:factory``, and weights from a ``.pt`` state dict.

``factory()`` returns the module, ``(module, example_inputs)`` or ``(module, example_inputs, dynamic_shapes)`` (the
file knows which axes are dynamic: ``{"input_ids": {0: "batch", 1: "sequence"}}``). The file runs as a module of
its own (its folder is importable while it loads, so it can import its neighbours). Checkpoints load with
``torch.load(..., weights_only=True)``: a file that would need arbitrary unpickling is refused rather than executed.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import traceback
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import BushuError


def _user_frame(exc: BaseException, path: Path) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve() == path.resolve()]
    return f" at {path.name}:{frames[-1].lineno}" if frames else ""


def _load_file(path: Path):
    spec = importlib.util.spec_from_file_location(f"bushu_factory_{abs(hash(path.resolve()))}", path)
    if spec is None or spec.loader is None:
        raise BushuError(f"{path} can't be imported as Python: give a .py file")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        spec.loader.exec_module(mod)
    except Exception as e:
        raise BushuError(f"importing {path} raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                         f"{_user_frame(e, path)}: fix the file (rerun with --debug for the traceback)") from e
    finally:
        sys.path.remove(str(path.parent.resolve()))
    return mod


class Made(NamedTuple):
    """What a factory made; ``example_inputs`` and ``dynamic_shapes`` are None when it did not say."""

    module: Any
    example_inputs: Any = None
    dynamic_shapes: Any = None


def load_factory(spec: str) -> Made:
    """Call the factory named by ``path/to/file.py:factory`` (see the module docstring for what it may return)."""
    import torch

    path_s, sep, name = spec.rpartition(":")
    if not sep or not path_s or not name.isidentifier():
        raise BushuError(f"'{spec}' is not FILE.py:FUNCTION: write e.g. examples/digits_cnn.py:factory")
    path = Path(path_s)
    if not path.is_file():
        raise BushuError(f"no such file: {path} (from '{spec}'): give an existing FILE.py:FUNCTION")
    mod = _load_file(path)
    fn = getattr(mod, name, None)
    if not callable(fn):
        found = sorted(k for k, v in vars(mod).items() if callable(v) and not k.startswith("_")
                       and getattr(v, "__module__", None) == mod.__name__)
        raise BushuError(f"{path} has no function '{name}'" + (f" (it defines {', '.join(found)})" if found else "")
                         + f": write {path}:FUNCTION")
    try:
        made = fn()
    except Exception as e:
        raise BushuError(f"{name}() in {path} raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                         f"{_user_frame(e, path)} (rerun with --debug for the traceback)") from e
    parts = made if isinstance(made, tuple) and 2 <= len(made) <= 3 else (made,)
    result = Made(*parts)
    if not isinstance(result.module, torch.nn.Module):
        raise BushuError(f"{name}() in {path} returned a {type(result.module).__name__}: return a torch.nn.Module, "
                         "(module, example_inputs) or (module, example_inputs, dynamic_shapes)")
    return result


def load_weights(module, path: str | Path) -> None:
    """Load a state dict saved with ``torch.save(model.state_dict(), path)`` into ``module`` (also accepted: a dict
    holding it under ``state_dict`` or ``model``). Keys must match exactly."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise BushuError(f"no such checkpoint: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch names a pickled class as "Unsupported global: GLOBAL pkg.Class"; any other refusal is a damaged file
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found is None:
            raise BushuError(f"{path} is not a torch checkpoint (its pickle is unreadable): give a file written by "
                             "torch.save(model.state_dict(), path)") from None
        raise BushuError(f"{path} holds more than tensors (it pickles {found.group(1)}): loading it would run "
                         "arbitrary code, so it is refused; save model.state_dict() instead") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise BushuError(f"{path} is not a torch checkpoint ({str(e).splitlines()[0][:160]}): give a file written by "
                         "torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BushuError(f"{path} is not a state dict of tensors: save model.state_dict()")
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes that don't match
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise BushuError(f"{path} doesn't fit the module ({lines[-1][:200]}): is it the checkpoint of this "
                         "model?") from None
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append(f"missing {', '.join(result.missing_keys[:3])}{' …' if len(result.missing_keys) > 3 else ''}")
        if result.unexpected_keys:
            parts.append(f"unexpected {', '.join(result.unexpected_keys[:3])}"
                         f"{' …' if len(result.unexpected_keys) > 3 else ''}")
        raise BushuError(f"{path} doesn't fit the module ({'; '.join(parts)}): is it the checkpoint of this model?")

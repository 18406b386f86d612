"""bushu (部署, "deploy"): take a trained neural network to production.

The public façade. Each name is one public function; the CLI's subcommands are thin shells over them::

    import bushu
    model = bushu.load("model.onnx")
    report = bushu.inspect(model)
    outputs = bushu.run(model, engine="ort")
    result = bushu.compare("a.onnx", "b.onnx")          # truthy when the outputs agree

Submodules are imported on first use, so ``import bushu`` stays cheap.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "load": "bushu.ir",
    "save": "bushu.ir",
    "BushuError": "bushu.errors",
    "EngineOptions": "bushu.engines.base",
    "open_session": "bushu.engines",
    "measure": "bushu.timing",
    "inspect": "bushu.inspect",
    "run": "bushu.run",
    "compare": "bushu.compare",
    "export": "bushu.export",
    "optimize": "bushu.passes",
    "edit": "bushu.edit",
    "reduce": "bushu.reduce",
    "quantize": "bushu.quant",
    "profile": "bushu.profile",
    "bench": "bushu.bench",
    "convert": "bushu.convert",
    "serve": "bushu.serve",
    "report": "bushu.report",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'bushu' has no attribute '{name}'")


class _Facade(types.ModuleType):
    # Importing a submodule (bushu.convert) makes Python set it as an attribute of this package, which would hide
    # the function of the same name (bushu.convert()) from __getattr__ for good: keep those names for the API.
    def __setattr__(self, name: str, value) -> None:
        if name in _API and isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{name}":
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Facade

if TYPE_CHECKING:  # pragma: no cover
    from .engines import open_session
    from .engines.base import EngineOptions
    from .errors import BushuError
    from .ir import load, save
    from .timing import measure

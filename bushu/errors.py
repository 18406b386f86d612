"""Errors a user can fix.

Every exception that reaches the CLI as a :class:`BushuError` is printed as one line and exits with code 2
(a traceback only with ``--debug``). The message says what is wrong *and* how to fix it.
"""

from __future__ import annotations


class BushuError(Exception):
    """Bad input or a missing resource: one line for the user, exit code 2."""

    exit_code = 2


def first_line(e: BaseException) -> str:
    """An exception's first line (ONNX Runtime's and the checker's messages run over several), or its type."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class MissingExtraError(BushuError, ImportError):
    """A feature needs an optional dependency that is not installed."""

    def __init__(self, feature: str, extra: str, module: str):
        super().__init__(f"{feature} needs the '{module}' package: pip install 'bushu[{extra}]'")
        self.extra = extra
        self.module = module


def require(module: str, *, extra: str, feature: str):
    """Import ``module`` or raise a one-line error naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingExtraError(feature, extra, module.split(".")[0]) from e

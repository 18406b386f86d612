"""What every converter shares: its error and its message."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import BushuError


class ConversionError(BushuError):
    """A converter refused the model: its own message, and the ops it does not support (when it names them)."""

    def __init__(self, target: str, message: str, unsupported: Sequence[str] = (), log: str = ""):
        ops = f" (unsupported ops: {', '.join(unsupported)})" if unsupported else ""
        super().__init__(f"{target} conversion failed: {message}{ops}")
        self.target = target
        self.converter_message = message
        self.unsupported = tuple(unsupported)
        self.log = log


def last_lines(text: str, n: int = 1) -> str:
    """The last ``n`` non-empty lines of a converter's log, terminal colour codes taken out."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " / ".join(lines[-n:]) if lines else "no message"

"""Resident memory of this process, from ``/proc/self/status`` (Linux).

Peak memory around a piece of work: reset the kernel's high-water mark (``VmHWM``) by writing ``5`` to
``/proc/self/clear_refs`` (Linux ≥ 4.0), do the work, read ``VmHWM`` again. Outside Linux the numbers are ``None``.
"""

from __future__ import annotations


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mib() -> float | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def peak_mib() -> float | None:
    kib = _status_kib("VmHWM")
    return None if kib is None else kib / 1024


def reset_peak() -> bool:
    """Set the high-water mark to the current RSS; ``False`` when the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False

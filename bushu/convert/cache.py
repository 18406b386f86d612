"""A folder of converted models keyed by content, so engines that need their own format convert once.

The key is a SHA-256 of the ONNX bytes, the target, the shapes the converter was given and the converter's
version: a changed model, a changed shape binding or an upgraded converter never reuses a stale file. The folder
is ``$BUSHU_CACHE_DIR/convert`` (default ``~/.cache/bushu/convert``), one sub-folder per target, one entry per key.

Writes and removals are atomic: an entry is converted in a temporary folder and renamed into place, and an entry
being removed is first renamed out of the way (``.trash-…``), so two processes never see half an entry.

The cache is bounded: after each new entry, the least recently used entries (by the time of their last use, kept
as the entry folder's mtime, which every hit refreshes; atime is not reliable on ``noatime``/``relatime`` mounts)
are removed until the whole cache fits in ``$BUSHU_CACHE_MAX_GB`` (default 2 GB; the entry just made is always
kept). :func:`clear` (``bushu convert --clear-cache``) empties it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import BushuError
from ..results import Result, human_bytes

DEFAULT_MAX_GB = 2.0
MAX_ENV = "BUSHU_CACHE_MAX_GB"
_TEMP_PREFIXES = (".tmp-", ".trash-")
_STALE_TEMP_S = 3600  # a temporary folder this old belongs to a process that died mid-conversion


def cache_root() -> Path:
    return Path(os.environ.get("BUSHU_CACHE_DIR") or Path.home() / ".cache" / "bushu") / "convert"


def max_bytes() -> int:
    """The size cap from ``$BUSHU_CACHE_MAX_GB`` (GB = 10⁹ bytes), default 2 GB."""
    raw = os.environ.get(MAX_ENV, "").strip()
    if not raw:
        return int(DEFAULT_MAX_GB * 1e9)
    try:
        gb = float(raw)
    except ValueError:
        gb = -1.0
    if not gb >= 0:  # also refuses nan
        raise BushuError(f"{MAX_ENV}={raw!r} is not a size: set it to a number of GB ≥ 0, e.g. {MAX_ENV}=2")
    return int(gb * 1e9)


def key(onnx_bytes: bytes, target: str, settings: dict) -> str:
    h = hashlib.sha256(onnx_bytes)
    h.update(json.dumps({"target": target, **settings}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def _size(folder: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(folder):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass  # removed meanwhile
    return total


def _touch(folder: Path) -> None:
    try:
        os.utime(folder)  # last use: the entry's mtime
    except OSError:
        pass  # removed by another process meanwhile; the caller already holds its path


def _remove(folder: Path) -> bool:
    """Rename ``folder`` out of the way, then delete it: nobody sees a half-removed entry."""
    trash = folder.with_name(f".trash-{folder.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(folder, trash)
    except OSError:
        return False  # already gone (another process evicted it)
    shutil.rmtree(trash, ignore_errors=True)
    return True


@dataclasses.dataclass(frozen=True)
class Entry:
    target: str
    key: str
    path: Path
    bytes: int
    last_used: float  # epoch seconds


def entries() -> list[Entry]:
    """Every complete entry, least recently used first."""
    out = []
    root = cache_root()
    if not root.is_dir():
        return out
    for target_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for p in target_dir.iterdir():
            if p.name.startswith(_TEMP_PREFIXES) or not p.is_dir():
                continue
            try:
                used = p.stat().st_mtime
            except OSError:
                continue
            out.append(Entry(target_dir.name, p.name, p, _size(p), used))
    return sorted(out, key=lambda e: e.last_used)


def _sweep_temps(older_than_s: float) -> int:
    """Remove temporary folders left by processes that died mid-conversion; returns the bytes freed."""
    freed = 0
    root = cache_root()
    if not root.is_dir():
        return 0
    now = time.time()
    for target_dir in (p for p in root.iterdir() if p.is_dir()):
        for p in target_dir.iterdir():
            if p.name.startswith(_TEMP_PREFIXES):
                try:
                    if now - p.stat().st_mtime < older_than_s:
                        continue
                except OSError:
                    continue
                size = _size(p)
                shutil.rmtree(p, ignore_errors=True)
                freed += size
    return freed


def evict(limit: int | None = None, keep: Path | None = None) -> list[Entry]:
    """Remove least recently used entries until the cache is at most ``limit`` bytes (default :func:`max_bytes`);
    ``keep`` is never removed. Returns the removed entries."""
    limit = max_bytes() if limit is None else limit
    found = entries()
    total = sum(e.bytes for e in found)
    removed = []
    for e in found:
        if total <= limit:
            break
        if keep is not None and e.path == keep:
            continue
        if _remove(e.path):
            removed.append(e)
        total -= e.bytes
    return removed


def get_or_create(target: str, entry_key: str, create: Callable[[Path], None]) -> Path:
    """The cache folder for ``entry_key``; on a miss ``create(tmp_dir)`` fills a fresh folder that then takes
    its place, and the least recently used entries are evicted to keep the cache under its cap. ``create`` raises
    to leave nothing behind."""
    final = cache_root() / target / entry_key
    if final.is_dir():
        _touch(final)
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
    try:
        create(tmp)
        try:
            os.rename(tmp, final)
        except OSError:  # another process won the race: its entry is as good as ours
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _touch(final)
    _sweep_temps(_STALE_TEMP_S)
    evict(keep=final)
    return final


@dataclasses.dataclass(frozen=True)
class CacheCleared(Result):
    """What ``bushu convert --clear-cache`` removed."""

    kind = "cache-cleared"
    folder: str
    entries: int
    bytes: int

    def __str__(self) -> str:
        return f"removed {self.entries} converted models ({human_bytes(self.bytes)}) from {self.folder}"


def clear() -> CacheCleared:
    """Remove every entry (and leftover temporary folders) from the conversion cache."""
    found = entries()
    removed = [e for e in found if _remove(e.path)]
    freed = sum(e.bytes for e in removed) + _sweep_temps(older_than_s=0)
    return CacheCleared(str(cache_root()), len(removed), freed)

"""A folder of converted models keyed by content, so engines that need their own format convert once.

The key is a SHA-256 of the ONNX bytes, the target, the shapes the converter was given and the converter's
version: a changed model, a changed shape binding or an upgraded converter never reuses a stale file. The folder
is ``$BUSHU_CACHE_DIR/convert`` (default ``~/.cache/bushu/convert``). An entry appears atomically (converted in a
temporary folder, then renamed), so two processes converting the same model at once never see half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("BUSHU_CACHE_DIR") or Path.home() / ".cache" / "bushu") / "convert"


def key(onnx_bytes: bytes, target: str, settings: dict) -> str:
    h = hashlib.sha256(onnx_bytes)
    h.update(json.dumps({"target": target, **settings}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def get_or_create(target: str, entry_key: str, create: Callable[[Path], None]) -> Path:
    """The cache folder for ``entry_key``; on a miss ``create(tmp_dir)`` fills a fresh folder that then takes
    its place. ``create`` raises to leave nothing behind."""
    final = cache_root() / target / entry_key
    if final.is_dir():
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
    return final

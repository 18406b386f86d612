"""ONNX → MNN through the converter compiled into the ``mnn`` wheel (``_tools.mnnconvert``).

Never through the ``mnnconvert`` script or ``MNN.tools``: they import a logger that runs
``pip install -U aliyun-log-python-sdk`` at run time (which downgraded protobuf and broke ``import onnx`` here) and
send telemetry with a machine id. The compiled entry does neither. It runs in a child process because it prints
to the C ``stdout`` (which would corrupt ``--json``), returns ``True`` even when it failed, and could take the
process down on a model it can't handle; success is judged from its log and the file it wrote.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

from ..errors import MissingExtraError
from .common import ConversionError, last_lines

FILES = ("model.mnn",)

# The child imports only the compiled extension: nothing that could install or phone home.
_CHILD = "import sys, _tools; _tools.mnnconvert(sys.argv[1:])"


def version() -> str:
    from importlib import metadata

    return f"mnn {metadata.version('mnn')}"


def convert(onnx_path: Path, out_dir: Path, *_ignored) -> list[Path]:
    """Convert ``onnx_path`` to ``out_dir/model.mnn`` (MNN keeps dynamic shapes; no shapes needed)."""
    if importlib.util.find_spec("_tools") is None:
        raise MissingExtraError("conversion to MNN", "mnn", "mnn")
    out = out_dir / FILES[0]
    argv = ["mnnconvert", "-f", "ONNX", "--modelFile", str(onnx_path), "--MNNModel", str(out), "--bizCode", "bushu"]
    proc = subprocess.run([sys.executable, "-c", _CHILD, *argv], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    log = proc.stdout + proc.stderr
    unsupported = []
    for m in re.finditer(r"Not Support:\s*(.+)", log):
        unsupported += [op.split("::")[-1] for op in m.group(1).split()]
    if proc.returncode != 0 or "Converted Failed" in log or unsupported or not out.is_file():
        if proc.returncode < 0:
            msg = f"the MNN converter crashed (signal {-proc.returncode}): {last_lines(log)}"
        else:
            named = re.search(r"(\S[^\n]*Not Support[^\n]*)", log)
            msg = "MNN's converter: " + (named.group(1).split("] ")[-1].lstrip(":0123456789 ") if named else last_lines(log)).strip()
        raise ConversionError("mnn", msg, unsupported, log=log)
    return [out]

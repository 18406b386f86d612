from __future__ import annotations

import dataclasses

HELP = "describe a model: signature, parameters, per-node FLOPs and bytes, problems"
EXAMPLES = """\
  bushu inspect model.onnx
  bushu inspect ch_PP-OCRv4_rec_infer.onnx --shape x:1x3x48x320
  bushu inspect model.onnx --shape batch=8 --shape seq=128 --top 0
  bushu inspect silero_vad.onnx --shape input:1x576 --shape state:2x1x128 --json
  bushu inspect model.onnx --engines none          # skip the engine op-support check
"""


def add_arguments(p):
    p.add_argument("model", help="ONNX file")
    p.add_argument("--shape", action="append", default=[], metavar="NAME:1x3x224x224|DIM=8",
                   help="bind an input's shape or a symbolic dim before counting FLOPs (repeatable)")
    p.add_argument("--engines", default=None, metavar="ort,openvino",
                   help="engines whose op support is checked (default: ort,openvino; 'none' to skip)")
    p.add_argument("--top", type=int, default=15, metavar="N", help="rows per table in the text output (0: all)")


def run(args):
    from ..inputs import parse_shape_args
    from ..inspect import inspect

    engines = None
    if args.engines is not None:
        engines = () if args.engines.strip().lower() == "none" else tuple(e for e in args.engines.split(",") if e)
    result = inspect(args.model, parse_shape_args(args.shape), engines=engines)
    return dataclasses.replace(result, top=max(args.top, 0))

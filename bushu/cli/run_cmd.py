from __future__ import annotations

from ._options import add_engine_arguments, add_input_arguments, engine_options, input_kwargs

HELP = "run a model once on an engine and summarise its outputs"
EXAMPLES = """\
  bushu run model.onnx
  bushu run model.onnx --engine openvino --shape x:1x3x48x320 --save-outputs out.npz
  bushu run silero_vad.onnx --value sr=16000 --shape input:1x576 --shape state:2x1x128   # a zoo model's own file
                                                     # gets these by itself: bushu run silero-vad
  bushu run model.onnx --input feeds.npz --time --json
"""


def add_arguments(p):
    p.add_argument("model", help="ONNX file")
    add_engine_arguments(p)
    add_input_arguments(p)
    p.add_argument("--save-outputs", default=None, metavar="OUT.npz", help="write the outputs to a .npz file")
    p.add_argument("--time", action="store_true", help="also measure latency (median and quantiles)")
    p.add_argument("--force", action="store_true", help="allow --save-outputs to replace an input file")


def run(args):
    from ..run import run

    return run(args.model, engine=args.engine, inputs=args.input, options=engine_options(args),
               save_outputs=args.save_outputs, time=args.time, force=args.force, **(input_kwargs(args) if args.input is None else {}))

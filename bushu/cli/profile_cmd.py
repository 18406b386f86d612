from __future__ import annotations

from ..inputs import parse_shape_args, parse_value_args
from ..report import add_report_argument, write_if_asked

HELP = "per-kernel time on ORT/OpenVINO joined with FLOPs and bytes: GFLOP/s, % of peak, bound, trace"
EXAMPLES = """\
  bushu profile model.onnx
  bushu profile ppocr-rec --engine openvino --trace rec.trace.json
  bushu profile model.onnx --shape x:1x3x224x224 --threads 1 --report profile.html --json
"""


def add_arguments(p):
    p.add_argument("model", help="ONNX file or zoo model name (ppocr-cls, ppocr-rec, …)")
    p.add_argument("--engine", default="ort", choices=["ort", "openvino"], help="engine (default: ort)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the engine's)")
    p.add_argument("--opt-level", default="all", choices=["disable", "basic", "extended", "all"],
                   help="engine graph optimization level (default: all)")
    p.add_argument("--input", "-i", default=None, help="a .npz/.npy file or folder to feed (default: synthesized)")
    p.add_argument("--shape", action="append", default=[], metavar="NAME:1x3x224x224|DIM=8",
                   help="bind an input's shape or a symbolic dim (repeatable)")
    p.add_argument("--value", action="append", default=[], metavar="NAME=NUMBER",
                   help="fill an input with a fixed value, e.g. sr=16000 (repeatable)")
    p.add_argument("--budget", type=float, default=1.0, metavar="SECONDS", help="profiled runs (default: 1 s)")
    p.add_argument("--trace", default=None, metavar="OUT.json", help="write a Chrome/Perfetto trace")
    add_report_argument(p)


def run(args):
    from ..profile import profile
    from ..run import check_output_path

    if args.trace:  # refused before the work: never over the model or its inputs
        check_output_path(args.trace, (args.model, args.input), force=None, flag="--trace", suffix=None)
    from ..progress import busy

    with busy(f"profiling on {args.engine}", enabled=not args.quiet):
        result = profile(args.model, args.engine, shapes=parse_shape_args(args.shape),
                         values=parse_value_args(args.value), inputs=args.input, threads=args.threads,
                         opt_level=args.opt_level, budget_s=args.budget, trace=args.trace)
    write_if_asked(args, result)
    return result

from __future__ import annotations

from ..inputs import parse_shape_args, parse_value_args
from ..report import add_report_argument, write_if_asked

HELP = "benchmark models across engines and batch sizes: latency quantiles, throughput, load time, peak memory"
EXAMPLES = """\
  bushu bench model.onnx
  bushu bench ppocr-rec --engines ort,openvino,ncnn,mnn --batch 1,8
  bushu bench a.onnx b.onnx --threads 2 --csv bench.csv --report bench.html
  bushu bench model.onnx --shape x:1x3x224x224 --budget 3 --json
"""


def _ints(text: str) -> list[int]:
    from ..errors import BushuError

    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise BushuError(f"bad --batch '{text}': write sizes separated by commas, e.g. 1,8") from None


def add_arguments(p):
    p.add_argument("models", nargs="+", help="ONNX files or zoo model names (ppocr-cls, ppocr-rec, …)")
    p.add_argument("--engines", default="ort", help="engines separated by commas: ort,openvino,ncnn,mnn (default: ort)")
    p.add_argument("--batch", default="1", help="batch sizes separated by commas (default: 1)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the engine's)")
    p.add_argument("--opt-level", default="all", choices=["disable", "basic", "extended", "all"],
                   help="engine graph optimization level (default: all)")
    p.add_argument("--shape", action="append", default=[], metavar="NAME:1x3x224x224|DIM=8",
                   help="bind an input's shape or a symbolic dim (repeatable; the batch dim is set per --batch)")
    p.add_argument("--value", action="append", default=[], metavar="NAME=NUMBER",
                   help="fill an input with a fixed value, e.g. sr=16000 (repeatable)")
    p.add_argument("--warmup", type=float, default=0.25, metavar="SECONDS", help="warm-up time per row (default: 0.25)")
    p.add_argument("--budget", type=float, default=1.0, metavar="SECONDS", help="timed runs per row (default: 1)")
    p.add_argument("--in-process", action="store_true",
                   help="run every engine in this process (faster; peak memory less exact)")
    p.add_argument("--csv", default=None, metavar="FILE", help="also write the rows as CSV")
    add_report_argument(p)


def run(args):
    from ..bench import bench
    from ..run import check_output_path

    if args.csv:  # refused before the work: never over a model
        check_output_path(args.csv, args.models, force=None, flag="--csv", suffix=None)
    result = bench(args.models, engines=[e for e in args.engines.split(",") if e], batch=_ints(args.batch),
                   threads=args.threads, opt_level=args.opt_level, shapes=parse_shape_args(args.shape),
                   values=parse_value_args(args.value), warmup_s=args.warmup, budget_s=args.budget,
                   isolate=not args.in_process, show_progress=not args.quiet)
    if args.csv:
        result.write_csv(args.csv)
    write_if_asked(args, result)
    return result

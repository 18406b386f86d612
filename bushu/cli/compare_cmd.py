from __future__ import annotations

from ._options import add_engine_arguments, add_input_arguments, engine_options, input_kwargs

HELP = "compare two models, two engines, or a model and golden outputs; find the first divergent node"
EXAMPLES = """\
  bushu compare model.onnx optimized.onnx                 # two models on ONNX Runtime
  bushu compare model.onnx --engines ort,openvino --samples 8
  bushu compare model.onnx --reference outputs.npz        # outputs saved by: bushu run model.onnx --save-outputs
  bushu compare model.onnx quantized.onnx --layerwise --atol 1e-3 --min-cosine 0.99 --json
exit code: 0 when every output is within tolerance, 1 when one is not, 2 on bad input (e.g. signatures differ)
"""


from ..report import add_report_argument, write_if_asked


def add_arguments(p):
    from ..compare.metrics import Tolerance

    d = Tolerance()
    p.add_argument("model", help="the reference ONNX file (or the only one, with --engines or --reference)")
    p.add_argument("candidate", nargs="?", default=None, help="a second ONNX file, judged against the first")
    add_engine_arguments(p)
    g = p.add_argument_group("compare")
    g.add_argument("--engines", default=None, metavar="REF,CAND",
                   help="run the model on two engines, the first as reference (e.g. ort,openvino)")
    g.add_argument("--reference", default=None, metavar="OUTPUTS.npz",
                   help="golden outputs to compare the model with (as written by bushu run --save-outputs)")
    g.add_argument("--samples", type=int, default=1,
                   help="synthesized feeds to compare on, seeds SEED..SEED+N-1 (default: 1; with --input, its feeds)")
    g.add_argument("--atol", type=float, default=d.atol, help=f"absolute tolerance (default: {d.atol:g})")
    g.add_argument("--rtol", type=float, default=d.rtol, help=f"relative tolerance (default: {d.rtol:g})")
    g.add_argument("--min-cosine", type=float, default=d.min_cosine,
                   help=f"minimum cosine similarity per output (default: {d.min_cosine:g})")
    g.add_argument("--layerwise", action="store_true",
                   help="also compare every intermediate tensor both sides share (by name) and name the first "
                        "divergent node; an intermediate's atol is scaled by its largest reference magnitude")
    add_input_arguments(p)
    add_report_argument(p)


def run(args):
    from ..compare import Tolerance, compare

    engines = tuple(e.strip() for e in args.engines.split(",") if e.strip()) if args.engines else (args.engine,)
    synth = input_kwargs(args) if args.input is None else {}
    result = compare(args.model, args.candidate, engines=engines, reference=args.reference, inputs=args.input,
                     samples=args.samples, tol=Tolerance(args.atol, args.rtol, args.min_cosine),
                     layerwise=args.layerwise, options=engine_options(args), show_progress=not args.quiet, **synth)
    write_if_asked(args, result)
    return result

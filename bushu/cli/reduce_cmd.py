from __future__ import annotations

from ._options import add_input_arguments, input_kwargs

HELP = "shrink a mismatch (two engines, or two models) to the smallest subgraph that still shows it"
EXAMPLES = """\
  bushu reduce model.onnx --engines ort,openvino -o reduced.onnx
  bushu reduce model.onnx model.opt.onnx -o reduced.onnx            # two models on ORT: writes both parts
  bushu reduce model.onnx model.int8.onnx --engines ort,openvino -o reduced.onnx
  bushu reduce model.onnx --engines ort,openvino -o reduced.onnx --atol 1e-5 --rtol 1e-5 --input feeds.npz
"""


def add_arguments(p):
    p.add_argument("model", help="ONNX file (the reference)")
    p.add_argument("candidate", nargs="?", default=None,
                   help="a second ONNX file with the same inputs and outputs, judged against the first")
    p.add_argument("-o", "--output", required=True,
                   help="where to write the reduced model (with two models also <stem>.candidate.onnx; inputs go "
                        "to <stem>.inputs.npz)")
    p.add_argument("--engines", default=None,
                   help="reference,candidate (default: ort,openvino for one model, ort for two)")
    p.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance (default 1e-4)")
    p.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance (default 1e-3)")
    p.add_argument("--min-cosine", type=float, default=0.9999, help="minimum cosine similarity (default 0.9999)")
    p.add_argument("--force", action="store_true", help="overwrite the output")
    add_input_arguments(p)


def run(args):
    from ..compare.metrics import Tolerance
    from ..reduce import reduce

    tol = Tolerance(atol=args.atol, rtol=args.rtol, min_cosine=args.min_cosine)
    engines = tuple(e for e in args.engines.split(",") if e) if args.engines else None
    from ..progress import busy

    with busy("reducing", enabled=not args.quiet):
        _, result = reduce(args.model, args.output, candidate=args.candidate, engines=engines, inputs=args.input,
                           tol=tol, force=args.force, **(input_kwargs(args) if args.input is None else {}))
    return result

from __future__ import annotations

from ._options import add_input_arguments, input_kwargs

HELP = "graph passes and fusions to standard ONNX, each pass verified on ONNX Runtime"
EXAMPLES = """\
  bushu optimize model.onnx -o model.opt.onnx
  bushu optimize model.onnx -o out.onnx --level all --opset 17 --json
  bushu optimize minilm.onnx -o minilm.ort.onnx --target ort   # + ORT contrib fusions kept where faster
  bushu optimize model.onnx -o out.onnx --passes fold-constants,dead-code --verify end
  bushu optimize model.onnx -o out.onnx --skip fuse-gelu --input feeds.npz
  bushu optimize rec.onnx -o rec.static.onnx --shape x:1x3x48x320     # fixed dims in the output: more folds
  bushu optimize --list
"""


from ..report import add_report_argument, write_if_asked


def add_arguments(p):
    p.add_argument("model", nargs="?", help="ONNX file")
    p.add_argument("-o", "--output", help="where to write the optimized model")
    p.add_argument("--level", default="extended", choices=["basic", "extended", "all"],
                   help="basic: clean-up; extended: + folds into weights and fusions (default); all: + a second clean-up after the fusions")
    p.add_argument("--passes", default=None, help="run exactly these passes, in this order (comma-separated)")
    p.add_argument("--skip", default=None, help="passes to leave out (comma-separated)")
    p.add_argument("--verify", default=None, choices=["each", "end", "off"],
                   help="check outputs on ONNX Runtime after each pass (default below 1 GB), at the end, or never")
    p.add_argument("--samples", type=int, default=None,
                   help="synthesized feeds to verify with (default: 3; 1 for --verify end without If/Loop/Scan)")
    p.add_argument("--opset", type=int, default=None, help="convert to this opset first (fusions need 17/20/23)")
    p.add_argument("--target", default="generic", choices=["generic", "ort"],
                   help="generic: standard ONNX only (default); ort: + ONNX Runtime contrib fusions (com.microsoft "
                        "ops, for ONNX Runtime only), each kept only where ORT measures it faster")
    p.add_argument("--fold-limit", type=int, default=None, metavar="ELEMENTS",
                   help="largest constant folding may create (default: 262144 elements)")
    p.add_argument("--no-latency", action="store_true", help="skip the ORT latency before/after")
    p.add_argument("--allow-invalid", action="store_true", help="optimize a model that onnx.checker rejects")
    p.add_argument("--force", action="store_true", help="allow -o to overwrite the input")
    p.add_argument("--list", action="store_true", help="list the passes with one line each, and the levels")
    add_input_arguments(p)
    for action in p._actions:  # --shape does more here than synthesize: say so in --help
        if action.dest == "shape":
            action.help = ("fix an input's shape (NAME:1x3x48x320) or a symbolic dim (DIM=8) in the OUTPUT model, as "
                           "bushu edit --shape does, so shape-dependent folds fire; feeds are synthesized at it "
                           "(repeatable)")
    add_report_argument(p)


def run(args):
    from ..errors import BushuError

    if args.list:
        from ..passes.catalog import catalog

        return catalog()
    if not args.model or not args.output:
        raise BushuError("give a model and an output: bushu optimize model.onnx -o model.opt.onnx (or --list)")
    from ..inputs import parse_shape_args
    from ..passes import optimize
    from ..passes.registry import FOLD_SIZE_LIMIT

    _, result = optimize(
        args.model, args.output, level=args.level, passes=args.passes, skip=args.skip, verify=args.verify,
        opset=args.opset, static_shapes=parse_shape_args(args.shape), inputs=args.input, samples=args.samples,
        fold_size_limit=FOLD_SIZE_LIMIT if args.fold_limit is None else args.fold_limit, allow_invalid=args.allow_invalid,
        latency=not args.no_latency, force=args.force, show_progress=not args.quiet, target=args.target,
        **(input_kwargs(args) if args.input is None else {}),
    )
    write_if_asked(args, result)
    return result

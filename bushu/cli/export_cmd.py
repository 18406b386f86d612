from __future__ import annotations

from pathlib import Path

from ..errors import BushuError

HELP = "export a PyTorch module to ONNX and verify it against PyTorch"
EXAMPLES = """\
  bushu export examples/digits_cnn.py:factory -o digits.onnx --dynamic-batch
  bushu export examples/export_minilm.py:factory -o minilm.onnx
  bushu export examples/export_minilm.py:factory -o minilm.onnx --dynamic input_ids,attention_mask,token_type_ids:0
  bushu export mynet.py:build -o net.onnx --shape x:1x3x224x224 --dynamic x:0,2,3 --weights net.pt
  bushu export mynet.py:build -o net.onnx --shape x:1x3x224x224 --exporter torchscript --opset 18 --json

FILE.py:FUNCTION names a function that returns the module, (module, example_inputs) or (module, example_inputs,
dynamic_shapes); without example inputs, --shape gives float32 random ones; --dynamic adds to (and overrides) the
factory's dynamic axes. Exit code 0 when ONNX Runtime matches PyTorch on the example inputs and on
fresh inputs of other sizes along the dynamic axes, 1 when it does not, 2 on bad input or a failed export.
"""


def add_arguments(p):
    p.add_argument("factory", metavar="FILE.py:FUNCTION", help="a function returning the module (and example inputs)")
    p.add_argument("-o", "--output", required=True, help="the ONNX file to write")
    p.add_argument("--weights", default=None, metavar="CKPT.pt",
                   help="a state dict to load into the module (torch.load with weights_only=True)")
    p.add_argument("--shape", action="append", default=[], metavar="NAME:1x3x224x224",
                   help="example input shape (float32 random) when the factory returns no example inputs")
    p.add_argument("--dynamic", action="append", default=[], metavar="NAME:AXIS[=DIM],...",
                   help="dynamic axes of inputs, e.g. x:0,2,3 or ids,mask:0=batch,1=sequence (repeatable)")
    p.add_argument("--dynamic-batch", action="store_true", help="axis 0 of every input is a dynamic 'batch'")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--exporter", default="auto", choices=["auto", "dynamo", "torchscript"],
                   help="auto tries dynamo, then TorchScript (default: auto)")
    p.add_argument("--input-names", default=None, metavar="A,B", help="ONNX names of the positional inputs")
    p.add_argument("--output-names", default=None, metavar="A,B", help="ONNX names of the outputs")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.add_argument("--atol", type=float, default=1e-4, help="verification absolute tolerance (default: 1e-4)")
    p.add_argument("--rtol", type=float, default=1e-3, help="verification relative tolerance (default: 1e-3)")
    p.add_argument("--min-cosine", type=float, default=0.9999, help="verification minimum cosine (default: 0.9999)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fresh verification inputs (default: 0)")
    p.add_argument("--force", action="store_true", help="allow -o to overwrite the factory file or the checkpoint")


def parse_dynamic(items) -> dict[str, dict[int, str] | list[int]]:
    """``x:0,2,3`` → ``{"x": [0, 2, 3]}``; ``ids,mask:0=batch,1=sequence`` → the same ``{0: "batch", 1:
    "sequence"}`` for ``ids`` and ``mask`` (an axis without ``=DIM`` is named as in a plain list)."""
    out: dict[str, dict[int, str] | list[int]] = {}
    for item in items:
        names, sep, spec = item.rpartition(":")
        try:
            if not sep or not names or not spec:
                raise ValueError
            pairs = [part.partition("=") for part in spec.split(",")]
            for name in names.split(","):
                if any(eq for _, eq, _ in pairs):
                    out[name] = {int(a): (d or ("batch" if int(a) == 0 else f"{name}_{a}")) for a, _, d in pairs}
                else:
                    out[name] = [int(a) for a, _, _ in pairs]
        except ValueError:
            raise BushuError(f"bad --dynamic '{item}': write NAME:0,2 or NAME1,NAME2:0=batch,1=sequence") from None
    return out


def _examples_from_shapes(module, shapes: dict, seed: int):
    import torch

    from ..export.signature import forward_params

    params = forward_params(module)
    unknown = [n for n in shapes if n not in params]
    if unknown:
        raise BushuError(f"--shape names {', '.join(unknown)}, but forward() takes {', '.join(params) or 'nothing'}")
    missing = [n for n in params if n not in shapes]
    if missing:
        raise BushuError(f"no example for input(s) {', '.join(missing)}: add --shape {missing[0]}:1x3x224x224, or "
                         "return (module, example_inputs) from the factory")
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shapes[n], generator=g) for n in params)


def _split(names: str | None) -> list[str] | None:
    return [n for n in names.split(",") if n] if names else None


def run(args):
    from ..compare.metrics import Tolerance
    from ..errors import require
    from ..export import export, load_factory, load_weights
    from ..inputs import parse_shape_args

    require("torch", extra="torch", feature="bushu export")
    out = Path(args.output).resolve()
    protected = [Path(args.factory.rpartition(":")[0]), *([Path(args.weights)] if args.weights else [])]
    if not args.force and any(p.exists() and p.resolve() == out for p in protected):
        raise BushuError(f"refusing to overwrite the input {args.output}: choose another -o or pass --force")
    shapes = parse_shape_args(args.shape)
    if any(not isinstance(v, tuple) for v in shapes.values()):
        raise BushuError("--shape for export takes NAME:1x3x224x224 (whole input shapes only)")
    module, example, dynamic = load_factory(args.factory)
    dynamic = {**(dynamic or {}), **parse_dynamic(args.dynamic)}  # the command line wins over the factory
    if args.weights:
        load_weights(module, args.weights)
    if example is None:
        example = _examples_from_shapes(module, shapes, args.seed)
    elif shapes:
        raise BushuError(f"{args.factory} already returns example inputs: drop --shape, or return only the module")
    return export(
        module, example, output=args.output, dynamic_shapes=dynamic, dynamic_batch=args.dynamic_batch,
        opset=args.opset, input_names=_split(args.input_names), output_names=_split(args.output_names),
        exporter=args.exporter, verify=not args.no_verify,
        tol=Tolerance(atol=args.atol, rtol=args.rtol, min_cosine=args.min_cosine),
        force=args.force, seed=args.seed, show_progress=not args.quiet,
    )

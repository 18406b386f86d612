from __future__ import annotations

from ._options import add_input_arguments

HELP = "graph surgery: static or renamed dims, bound inputs, opset conversion, subgraph extraction, renaming (verified)"
EXAMPLES = """\
  bushu edit model.onnx -o static.onnx --shape x:1x3x224x224
  bushu edit model.onnx -o out.onnx --dim batch=1 --dim sequence=seq
  bushu edit model.onnx -o out.onnx --opset 17
  bushu edit silero_vad.onnx -o vad16k.onnx --bind sr=16000
  bushu edit model.onnx -o part.onnx --inputs conv1_out --outputs logits
  bushu edit model.onnx -o out.onnx --rename x=image
"""


def add_arguments(p):
    p.add_argument("model", help="ONNX file")
    p.add_argument("-o", "--output", required=True, help="where to write the edited model")
    p.add_argument("--dim", action="append", default=[], metavar="DIM=8|DIM=newname",
                   help="fix a symbolic dim to a number, or rename it (repeatable)")
    p.add_argument("--bind", action="append", default=[], metavar="NAME=NUMBER|NAME=FILE.npy",
                   help="replace an input by a constant (an initializer), so optimize folds what depends on it "
                        "(repeatable)")
    p.add_argument("--opset", type=int, default=None, help="convert to this opset (ONNX version converter)")
    p.add_argument("--inputs", default=None, help="extract: the tensors that become the inputs (comma-separated)")
    p.add_argument("--outputs", default=None, help="extract: the tensors that become the outputs (comma-separated)")
    p.add_argument("--rename", action="append", default=[], metavar="OLD=NEW", help="rename an input or output")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime check of each edit")
    p.add_argument("--force", action="store_true", help="allow -o to overwrite the input")
    add_input_arguments(p)


def _pairs(items, flag):
    """``OLD=NEW`` items, each flag repeatable and comma-separated (``--rename x=image,y=scores``)."""
    from ..errors import BushuError

    out = {}
    for item in (part for entry in items for part in entry.split(",")):
        k, sep, v = item.partition("=")
        if not sep or not k or not v or "=" in v:
            raise BushuError(f"bad {flag} '{item}': write OLD=NEW (repeat the flag or separate pairs by commas)")
        out[k] = v
    return out


def _bind_values(items):
    import numpy as np

    from ..errors import BushuError

    out = {}
    for name, text in _pairs(items, "--bind").items():
        if text.endswith(".npy"):
            try:
                out[name] = np.load(text)
            except (OSError, ValueError) as e:
                raise BushuError(f"--bind {name}={text}: can't read it ({e})") from None
            continue
        try:
            out[name] = float(text) if any(c in text.lower() for c in ".en") else int(text)
        except ValueError:
            raise BushuError(f"bad --bind '{name}={text}': write NAME=NUMBER or NAME=FILE.npy") from None
    return out


def run(args):
    from ..edit import edit
    from ..inputs import parse_range_args, parse_shape_args, parse_value_args

    # --shape INPUT:1x3x224x224 fixes an input; --shape DIM=8 / DIM=name fixes or renames a symbolic dim, as --dim
    dims = [s for s in args.shape if "=" in s and ":" not in s]
    shapes = dict(parse_shape_args([s for s in args.shape if s not in dims]))
    for k, v in _pairs([*dims, *args.dim], "--dim").items():
        shapes[k] = int(v) if v.isdigit() else v
    split = lambda s: [x for x in (s or "").split(",") if x]
    _, result = edit(args.model, args.output, shapes=shapes, bind_inputs=_bind_values(args.bind), opset=args.opset, inputs=split(args.inputs),
                     outputs=split(args.outputs), rename_io=_pairs(args.rename, "--rename"),
                     verify=not args.no_verify, force=args.force, feeds=args.input,
                     values=parse_value_args(args.value), ranges=parse_range_args(args.ranges), seed=args.seed)
    return result

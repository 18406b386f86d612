from __future__ import annotations

from ..inputs import parse_shape_args, parse_value_args

HELP = "convert an ONNX model to ncnn, MNN or OpenVINO IR and verify it against ONNX Runtime"
EXAMPLES = """\
  bushu convert model.onnx --to openvino -o model-ov
  bushu convert ppocr-cls --to ncnn -o cls-ncnn
  bushu convert ppocr-rec --to ncnn --shape x:1x3x48x320 -o rec-ncnn   # ncnn fixes the bound H and W
  bushu convert model.onnx --to mnn -o model-mnn --json
  bushu convert ppocr-cls --to ncnn --int8 --calib calib/ -o cls-ncnn-int8   # ncnn's own INT8 (.npz/.npy feeds)
  bushu convert --clear-cache       # empty the cache the ncnn/MNN engines convert into (size cap: BUSHU_CACHE_MAX_GB, default 2)
"""


def add_arguments(p):
    p.add_argument("model", nargs="?", help="ONNX file or zoo model name (ppocr-cls, ppocr-rec, …)")
    p.add_argument("--to", choices=["ncnn", "mnn", "openvino"], help="target format")
    p.add_argument("-o", "--output", default=None, metavar="DIR", help="output folder (default: MODEL-TARGET)")
    p.add_argument("--shape", action="append", default=[], metavar="NAME:1x3x224x224|DIM=8",
                   help="bind an input's shape or a symbolic dim (repeatable)")
    p.add_argument("--value", action="append", default=[], metavar="NAME=NUMBER",
                   help="fixed input value for the verification run (repeatable)")
    p.add_argument("--no-verify", action="store_true", help="skip the comparison with ONNX Runtime")
    p.add_argument("--threads", type=int, default=None, help="threads for the verification run")
    p.add_argument("--force", action="store_true", help="overwrite files already in the output folder")
    p.add_argument("--int8", action="store_true",
                   help="ncnn only: make ncnn's own INT8 model (what ncnn2table + ncnn2int8 do), calibrated on --calib")
    p.add_argument("--calib", default=None, metavar="DATA", help="calibration feeds for --int8: a folder of .npz/.npy")
    p.add_argument("--calib-method", default="minmax", choices=["minmax", "kl"],
                   help="input-blob threshold for --int8: the max of |x| (default) or KL divergence")
    p.add_argument("--calib-samples", type=int, default=100, help="calibration feeds used for --int8 (default: 100)")
    p.add_argument("--clear-cache", action="store_true",
                   help="remove every model the ncnn/MNN engines converted behind the scenes, then exit")


def run(args):
    from ..convert import convert
    from ..convert.cache import clear
    from ..errors import BushuError

    if args.clear_cache:
        if args.model or args.to:
            raise BushuError("--clear-cache takes no model or --to: run it alone, then convert")
        return clear()
    if not args.model or not args.to:
        raise BushuError("convert needs a model and a target: bushu convert MODEL --to ncnn|mnn|openvino")

    from ..progress import busy

    with busy(f"converting to {args.to}", enabled=not args.quiet):
        return convert(args.model, args.to, args.output, shapes=parse_shape_args(args.shape),
                       values=parse_value_args(args.value), verify_outputs=not args.no_verify, force=args.force,
                       threads=args.threads, int8=args.int8, calib=args.calib, calib_method=args.calib_method,
                       calib_samples=args.calib_samples)

from __future__ import annotations

from ..report import add_report_argument, write_if_asked

HELP = "quantize a model (INT8 static/dynamic, weight-only INT8/INT4, FP16) to an accuracy budget, with diagnosis"
EXAMPLES = """\
  bushu quantize model.onnx -o model.int8.onnx --calib feeds/            # .npz/.npy feeds, one per file
  bushu quantize model.onnx -o m.int8.onnx --calib images/ --size 224x224 --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225
  bushu quantize model.onnx -o m.int8.onnx --calib feeds/ --budget top1-drop<=0.5 --engine openvino
  bushu quantize model.onnx -o m.int8.onnx --calib feeds/ --eval my_metric.py:accuracy --budget eval-drop<=0.01
  bushu quantize model.onnx -o m.int8.onnx --calib feeds/ --diagnose --json
  bushu quantize encoder.onnx -o encoder.dyn.onnx --mode dynamic
  bushu quantize encoder.onnx -o encoder.int4.onnx --mode int4 --engine openvino     # checked on OpenVINO too
  bushu quantize model.onnx -o m.int8.onnx --calib feeds/ --engine openvino --placement ort
"""


def _csv(items) -> tuple[str, ...]:
    return tuple(x.strip() for item in items or () for x in item.split(",") if x.strip())


def _floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    from ..quant.data import parse_floats

    return None if text is None else parse_floats(text, flag)


def add_arguments(p):
    from ..quant.spec import PRESETS

    add_report_argument(p)
    p.add_argument("model", help="float ONNX model")
    p.add_argument("-o", "--output", required=True, help="where to write the quantized model")
    p.add_argument("--force", action="store_true", help="overwrite the input model if -o names it")
    g = p.add_argument_group("what")
    g.add_argument("--mode", default="static", choices=["static", "dynamic", "weight-only", "int4", "fp16"])
    g.add_argument("--engine", default="ort", help="target engine: ort or openvino (default: ort)")
    g.add_argument("--placement", default=None, choices=list(PRESETS),
                   help="whose Q/DQ placement (static) or file format (dynamic, int4) to write, checked on --engine "
                        "(default: on ort its own; on openvino each placement it computes right, the fastest kept)")
    g.add_argument("--method", default="mse", choices=["minmax", "percentile", "entropy", "mse", "auto"],
                   help="activation ranges (default: mse; auto starts from the best of the four on held-out feeds, then picks per tensor the method that lowers the output error)")
    g.add_argument("--percentile", type=float, default=99.999, help="for --method percentile (default: 99.999)")
    pc = g.add_mutually_exclusive_group()
    pc.add_argument("--per-channel", dest="per_channel", action="store_true", default=True,
                    help="weights per output channel (default)")
    pc.add_argument("--per-tensor", dest="per_channel", action="store_false", help="one scale per weight tensor")
    rr = g.add_mutually_exclusive_group()
    rr.add_argument("--reduce-range", dest="reduce_range", action="store_true", default=None,
                    help="7-bit weights (default: on for ONNX Runtime on CPUs without VNNI, where u8×s8 saturates)")
    rr.add_argument("--full-range", dest="reduce_range", action="store_false", help="8-bit weights everywhere")
    g.add_argument("--include", action="append", default=[], metavar="NAMES|OPTYPES",
                   help="quantize only these nodes or op types (comma-separated, repeatable)")
    g.add_argument("--exclude", action="append", default=[], metavar="NAMES|OPTYPES",
                   help="keep these nodes or op types in float (comma-separated, repeatable)")
    g.add_argument("--block-size", type=int, default=32, help="rows per scale for --mode int4 (default: 32)")
    a = p.add_argument_group("accuracy")
    a.add_argument("--budget", default=None, metavar="METRIC<=|>=VALUE",
                   help="cosine>=0.99 | snr>=30 | maxabs<=0.1 | top1-drop<=0.5 | eval-drop<=X (with --eval)")
    a.add_argument("--eval", default=None, metavar="module.py:fn", help="your metric: fn(run) -> float, higher is better")
    a.add_argument("--smoothquant", default="auto", metavar="auto|off|ALPHA",
                   help="SmoothQuant for the activations feeding MatMuls in transformers (default: auto, alpha searched on feeds it was not fitted on)")
    a.add_argument("--no-bias-correction", dest="bias_correction", action="store_false",
                   help="don't fold each layer's mean output error into its bias (on by default)")
    a.add_argument("--no-cle", dest="cle", action="store_false",
                   help="no cross-layer equalization of Conv → [ReLU] → Conv chains (on by default)")
    a.add_argument("--adaround", action="store_true",
                   help="learn each weight's rounding (up/down) per layer on the held-out feeds (AdaRound; slower)")
    a.add_argument("--diagnose", action="store_true", help="rank layers by sensitivity, find the first divergence")
    a.add_argument("--no-speed", action="store_true", help="don't measure FP32 vs quantized latency")
    d = p.add_argument_group("calibration data")
    d.add_argument("--calib", default=None, metavar="DATA", help="folder of .npz/.npy feeds or of images")
    d.add_argument("--heldout", default=None, metavar="DATA",
                   help="feeds to measure accuracy on (default: the first calibration feeds)")
    d.add_argument("--samples", type=int, default=None, help="use at most this many calibration feeds")
    d.add_argument("--preprocess", default=None, metavar="SPEC.yaml", help="image preprocessing as YAML")
    d.add_argument("--size", default=None, metavar="HxW", help="resize images to HxW")
    d.add_argument("--scale", type=float, default=1 / 255, help="multiply pixels by this first (default: 1/255)")
    d.add_argument("--mean", default=None, help="per-channel mean after scaling, e.g. 0.485,0.456,0.406")
    d.add_argument("--std", default=None, help="per-channel std, e.g. 0.229,0.224,0.225")
    d.add_argument("--channels", default="RGB", choices=["RGB", "BGR"], help="channel order (default: RGB)")
    d.add_argument("--layout", default="NCHW", choices=["NCHW", "NHWC"], help="image layout (default: NCHW)")


def _preprocess(args):
    from ..quant import ImagePreprocess

    if args.preprocess:
        return ImagePreprocess.from_yaml(args.preprocess)
    from ..quant.data import parse_size

    size = parse_size(args.size) if args.size else None
    if size is None and args.mean is None and args.std is None:
        return None
    return ImagePreprocess(size=size, scale=args.scale, mean=_floats(args.mean, "--mean") or (0.0, 0.0, 0.0),
                           std=_floats(args.std, "--std") or (1.0, 1.0, 1.0), channels=args.channels,
                           layout=args.layout)


def run(args):
    from ..quant import QuantConfig, quantize
    from ..quant.budget import load_eval

    sq = args.smoothquant
    if sq not in ("auto", "off"):
        sq = _floats(sq, "--smoothquant")[0]
    sq = None if sq == "off" else sq
    config = QuantConfig(
        engine=args.engine, placement=args.placement, mode=args.mode, method=args.method, per_channel=args.per_channel,
        reduce_range=args.reduce_range, include=_csv(args.include), exclude=_csv(args.exclude),
        percentile=args.percentile, max_samples=args.samples, smoothquant=sq,
        bias_correction=args.bias_correction, cle=args.cle, adaround=args.adaround, budget=args.budget,
        eval_fn=load_eval(args.eval) if args.eval else None, measure_speed=not args.no_speed,
        diagnose=args.diagnose, block_size=args.block_size, progress=not args.quiet)
    result = quantize(args.model, args.calib, config, heldout=args.heldout, preprocess=_preprocess(args),
                      output=args.output, force=args.force)
    write_if_asked(args, result)
    return result

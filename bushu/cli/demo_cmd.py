from __future__ import annotations

HELP = "run the whole loop on PP-OCRv4 rec (inspect, compare, export, optimize, quantize, bench, serve, report)"
EXAMPLES = """\
  bushu demo                 # writes demo-out/ and prints where the report is
  bushu demo --quick -o /tmp/demo
"""


def add_arguments(p):
    p.add_argument("-o", "--out", default="demo-out", help="output folder (default: demo-out)")
    p.add_argument("--quick", action="store_true", help="fewer samples and shorter timings")


def run(args):
    from ..demo import demo

    return demo(args.out, quick=args.quick, show_progress=not args.quiet, debug=args.debug)

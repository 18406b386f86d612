from __future__ import annotations

HELP = "join the --json results of other commands into one self-contained HTML report"
EXAMPLES = """\
  bushu bench model.onnx --json > bench.json
  bushu profile model.onnx --json > profile.json
  bushu report bench.json profile.json -o report.html
"""


def add_arguments(p):
    p.add_argument("results", nargs="+", help="JSON files written by --json (bench, profile, compare, optimize, …)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.html", help="the HTML file to write")
    p.add_argument("--title", default=None, help="page title (default: bushu report)")


def run(args):
    from ..report import report

    return report(args.results, args.output, title=args.title)

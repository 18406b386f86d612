"""Entry point of the ``bushu`` command.

Each subcommand module defines ``HELP`` (one line), ``EXAMPLES`` (shown by ``--help``), ``add_arguments(parser)``
and ``run(args)``, which calls one public function and returns its result. Here the result is printed as text or
``--json``; the exit code is 0 when the result is truthy (a check passed), 1 when it is not, 2 on bad input.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from .. import __version__
from ..errors import BushuError

# NOTE: the order here is the order of `bushu --help`.
COMMANDS = ["inspect", "run", "export", "compare", "optimize", "edit", "reduce", "quantize", "profile", "bench",
            "convert", "serve", "report", "demo"]


def _module(name: str):
    try:
        return importlib.import_module(f"bushu.cli.{name}_cmd")
    except ModuleNotFoundError as e:
        if e.name == f"bushu.cli.{name}_cmd":
            return None
        raise


def common_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bars or notes on stderr")
    g.add_argument("--debug", action="store_true", help="show tracebacks")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, with the way to get help
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bushu", description="Take a trained neural network to production.",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"bushu {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        mod = _module(name)
        if mod is None:
            continue
        # argparse %-formats help strings ("% of peak" would break `bushu --help`)
        p = sub.add_parser(name, help=mod.HELP.replace("%", "%%"), description=mod.HELP, epilog="examples:\n" + mod.EXAMPLES.rstrip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        common_arguments(p)
        p.set_defaults(_run=mod.run, _parser=p)
    return parser


def emit(result, args) -> int:
    """Print ``result`` and return the exit code it implies."""
    if result is None:
        return 0
    if isinstance(result, int) and not isinstance(result, bool):
        return result
    if getattr(args, "json", False):
        print(result.to_json() if hasattr(result, "to_json") else result)
    else:
        print(result.render() if hasattr(result, "render") else result)
    return 0 if bool(result) else 1


def _quiet_libraries(debug: bool) -> None:
    """Libraries' own log lines (onnx-ir's "cannot be found in any scope", ONNX Runtime's coloured errors) would
    come before bushu's one-line message; their exceptions carry the same text. ``--debug`` lets them through."""
    import logging
    import os

    if debug:
        os.environ["BUSHU_DEBUG"] = "1"  # read by bushu.engines.ort when it opens a session
    else:
        logging.getLogger("onnx_ir").setLevel(logging.ERROR)


def _synthesized_hint(e: BushuError, args) -> str:
    """An engine that failed to run a feed bushu synthesized from the signature (no ``--input``) most often
    wanted other dims or values than the signature says: say how to give them."""
    if "failed to run the model" not in str(e) or not hasattr(args, "input") or args.input is not None:
        return ""
    return (" (the inputs were synthesized from the model's signature: give real ones with --input, or their dims "
            "and values with --shape NAME:1x3x224x224 / --value NAME=NUMBER)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the subcommand that got them (`bushu compare: error: …`), not by `bushu`
        getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    _quiet_libraries(args.debug)
    try:
        return emit(args._run(args), args)
    except BushuError as e:
        if args.debug:
            traceback.print_exc()
        print(f"bushu {args.command}: error: {e}{_synthesized_hint(e, args)}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # `bushu inspect m.onnx | head`: the reader left; that is not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"bushu {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        where = _output_path_error(e, args)
        if where is None:
            return _internal_error(e, args)
        if args.debug:
            traceback.print_exc()
        print(f"bushu {args.command}: error: cannot write {where}: {e.strerror or e} ({e.filename}): "
              "choose an output in a folder you can write", file=sys.stderr)
        return 2
    except Exception as e:  # a bug in bushu, not bad input: say so, keep it one line unless --debug
        return _internal_error(e, args)


def _internal_error(e: Exception, args) -> int:
    if args.debug:
        raise e
    print(f"bushu {args.command}: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback "
          "and report it)", file=sys.stderr)
    return 3


def _output_path_error(e: OSError, args) -> str | None:
    """The ``-o``/``--output`` path when ``e`` is the failure to write it or to make its folder (a bad path the
    user gave: exit 2), else None (an OSError elsewhere is bushu's own)."""
    import os

    if not e.filename:
        return None
    failed = os.path.abspath(os.fsdecode(e.filename))
    for attr in ("output", "out", "save_outputs", "csv", "trace", "report"):
        out = getattr(args, attr, None)
        if not isinstance(out, (str, os.PathLike)) or not out:
            continue
        target = os.path.abspath(out)
        # the output itself, a folder on its way (one that is missing or a file), the atomic writer's temporary
        # beside it, or a file inside it (outputs that are folders)
        beside = os.path.dirname(failed) == os.path.dirname(target) and os.path.basename(failed).startswith(".bushu-")
        if failed == target or target.startswith(failed.rstrip(os.sep) + os.sep) or beside \
                or failed.startswith(target + os.sep):
            return os.fsdecode(out)
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

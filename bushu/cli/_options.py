"""Argument groups shared by the subcommands (engine options, inputs), and their conversion to API arguments."""

from __future__ import annotations

import argparse

from ..engines.base import EngineOptions
from ..inputs import parse_range_args, parse_shape_args, parse_value_args


def add_engine_arguments(p: argparse.ArgumentParser, *, engine: bool = True) -> None:
    g = p.add_argument_group("engine")
    if engine:
        g.add_argument("--engine", default="ort", help="ort, openvino, reference (default: ort)")
    g.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the engine's)")
    g.add_argument("--opt-level", default="all", choices=["disable", "basic", "extended", "all"],
                   help="engine graph optimization level (default: all)")
    g.add_argument("--providers", default="", help="ONNX Runtime execution providers, e.g. cuda,cpu")


def add_input_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inputs")
    g.add_argument("--input", "-i", default=None, help="a .npy/.npz file or a folder of them (default: synthesized)")
    g.add_argument("--shape", action="append", default=[], metavar="NAME:1x3x224x224|DIM=8",
                   help="bind an input's shape or a symbolic dim (repeatable)")
    g.add_argument("--value", action="append", default=[], metavar="NAME=NUMBER",
                   help="fill an input with a fixed value, e.g. sr=16000 (repeatable)")
    g.add_argument("--range", action="append", default=[], metavar="NAME=LOW:HIGH", dest="ranges",
                   help="draw an input from [LOW, HIGH), e.g. input_ids=0:30522 (repeatable)")
    g.add_argument("--fill", default="random", choices=["random", "zeros", "ones"], help="synthesized values")
    g.add_argument("--seed", type=int, default=0, help="seed for synthesized inputs (default: 0)")


def engine_options(args: argparse.Namespace) -> EngineOptions:
    shapes = {k: v for k, v in parse_shape_args(getattr(args, "shape", [])).items() if isinstance(v, tuple)}
    return EngineOptions(
        threads=getattr(args, "threads", None),
        opt_level=getattr(args, "opt_level", "all"),
        shapes=shapes,
        providers=tuple(x for x in getattr(args, "providers", "").split(",") if x),
    )


def input_kwargs(args: argparse.Namespace) -> dict:
    """Keyword arguments of :func:`bushu.inputs.synthesize` (and of every API call that synthesizes feeds)."""
    return dict(
        shapes=parse_shape_args(getattr(args, "shape", [])),
        values=parse_value_args(getattr(args, "value", [])),
        ranges=parse_range_args(getattr(args, "ranges", [])),
        fill=getattr(args, "fill", "random"),
        seed=getattr(args, "seed", 0),
    )

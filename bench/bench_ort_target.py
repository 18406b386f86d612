"""Benchmark ``bushu optimize --target ort``: each ONNX Runtime fusion against the generic output (a script, not a test).

For each transformer of the zoo (MiniLM and the tiny encoder, dynamo and TorchScript exports): the generic
``bushu optimize`` output is the baseline; each ``--target ort`` pass (ort-shapes, ort-attention, ort-mha) is applied
to it alone and timed against it on ONNX Runtime (ORT_ENABLE_ALL, 2 threads) in interleaved rounds (A B, B A, ...),
at several batch x sequence sizes. The ratio is fused/unfused latency (below 1: the fusion is faster) with the
interquartile range of the per-round ratios (the noise). The ``kept`` column is what ``--target ort`` decides with
its own (shorter) measurement at the default feeds.

    flock -x /tmp/bushu-quiet.lock .venv/bin/python bench/bench_ort_target.py --out docs/dev/ort-target-bench.md
"""

from __future__ import annotations

import argparse
import sys

import bushu
from bushu import zoo_torch
from bushu.engines import model_specs
from bushu.passes import ort_target, registry
from bushu.passes.registry import PassContext
from bushu.timing import machine

MODELS = [("minilm", False), ("minilm", True), ("tiny-encoder", False), ("tiny-encoder", True)]
SIZES = [(1, 64), (1, 256), (8, 64)]
PASSES = ["ort-shapes", "ort-attention", "ort-mha"]


def with_pass(model, name: str):
    cand = model.clone()
    ctx = PassContext()
    n = registry.get(name).run(cand, ctx)
    registry.get("dead-code").run(cand, ctx)
    return cand, n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--block", type=float, default=0.25, help="seconds per candidate per round")
    ap.add_argument("--models", default=None, help="only these zoo names (comma-separated)")
    args = ap.parse_args()
    rows = []
    for name, legacy in MODELS:
        if args.models and name not in args.models.split(","):
            continue
        label = f"{name}{' (legacy)' if legacy else ''}"
        path = zoo_torch.onnx_path(name, legacy=legacy)
        base, _ = bushu.optimize(path, verify="end", latency=False, show_progress=False)
        _, decided = bushu.optimize(path, verify="end", latency=False, show_progress=False, target="ort")
        status = {s.name: s.status for s in decided.steps if s.name in PASSES}
        specs, _ = model_specs(base)
        for pname in PASSES:
            cand, n = with_pass(base, pname)
            if not n:
                rows.append([label, pname, 0, "-", "-", "-", status.get(pname, "-")])
                continue
            cells = []
            for b, s in SIZES:
                feed = _feed(specs, b, s)
                r = ort_target.interleaved_ratio(base, cand, feed, rounds=args.rounds, block_s=args.block)
                cells.append(f"{r.median:.3f} ({r.q25:.2f}-{r.q75:.2f}); {r.a_ms:.2f}→{r.b_ms:.2f} ms")
                print(label, pname, (b, s), r, file=sys.stderr, flush=True)
            rows.append([label, pname, n, *cells, status.get(pname, "-")])
    head = ["model", "pass", "rewrites", *[f"ratio b{b}×s{s} (IQR); unfused→fused" for b, s in SIZES], "--target ort"]
    lines = [f"Measured on {machine()}; {args.rounds} interleaved rounds of {args.block} s per candidate.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


def _feed(specs, batch: int, seq: int):
    """Token inputs of (batch, seq): ids in the vocabulary's low range, a full attention mask, segment 0."""
    import numpy as np

    rng = np.random.default_rng(0)
    feed = {}
    for s in specs:
        if s.name == "input_ids":
            feed[s.name] = rng.integers(0, 1000, size=(batch, seq), dtype=np.int64)
        elif s.name == "attention_mask":
            feed[s.name] = np.ones((batch, seq), np.int64)
        else:
            feed[s.name] = np.zeros((batch, seq), np.int64)
    return feed


if __name__ == "__main__":
    sys.exit(main())

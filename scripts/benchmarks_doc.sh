#!/usr/bin/env bash
# Rebuild docs/benchmarks.md from the per-capability sections that bench/*.py write into docs/dev/.
set -euo pipefail
cd "$(dirname "$0")/.."
{
  cat <<'HEAD'
# Benchmarks

Every table here was produced by a script in `bench/` (the command is given with each table), comparing bushu
against its anchors **in the same run**, with medians and quantiles, and the machine and library versions recorded.
Absolute milliseconds on this 2-core machine drift up to 2× from minute to minute. Each run held an exclusive lock
that kept the test suites off the machine, but other engineers' interactive work still shared its two cores, so every
latency comparison interleaves its candidates in rounds and reports the ratio with its spread (IQR of the per-round
ratios): read the ratios within one table, not absolute numbers across tables.

| capability | script | section |
|---|---|---|
| optimize vs onnxsim / onnxslim | `bench/bench_optimize.py` | [below](#optimize) |
| optimize `--target ort`: each ONNX Runtime contrib fusion vs none | `bench/bench_ort_target.py` | [below](#ort-target) |
| quantize vs ONNX Runtime's quantizer / NNCF | `bench/bench_quant.py` | [below](#quantize) |
| quantize modes (dynamic, weight-only, int4, fp16) per engine | `bench/bench_quant_modes.py` | [below](#quantize-modes) |
| bench / profile overhead, engines vs peak | `bench/bench_perf.py` | [below](#performance) |
| serve vs in-process, LitServe, FastAPI | `bench/bench_serve.py` | [below](#serve) |

HEAD
  for part in optimize:optimize-bench ort-target:ort-target-bench quantize:quant-bench quantize-modes:quant-modes performance:perf-bench serve:serve-bench; do
    anchor=${part%%:*}; file=docs/dev/${part#*:}.md
    [ -f "$file" ] || continue
    echo "<a id=\"$anchor\"></a>"
    echo
    # demote the section's headings one level so the page keeps one title
    sed -e 's/^#/##/' "$file"
    echo
  done
} > docs/benchmarks.md.tmp
mv docs/benchmarks.md.tmp docs/benchmarks.md

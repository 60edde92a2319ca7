#!/usr/bin/env bash
# The Python layer's cost: run_with_cache (batch 1 and 32) and Python hooks against the Rust
# library's forward pass on the same input and hooks, side by side in one process; then
# TransformerLens on the same model file and input, where an environment with it exists.
#   bench/python.sh [--model smollm2] [--tokens 128] [--repeats 7]
#   bench/python.sh --setup-tl     first create the TransformerLens environment (~4 GB: PyPI's
#                                  torch brings the CUDA libraries; not CI)
# Builds the extension optimised first (PROFILE=dev bench/python.sh: the dev build the tests use).
set -euo pipefail
cd "$(dirname "$0")/.."
tl="${BENCH_TL_PYTHON:-${GLASSBOX_HOME:-$HOME/.cache/glassbox}/tl-venv/bin/python}"
if [[ "${1:-}" == "--setup-tl" ]]; then
  python3 -m venv "$(dirname "$(dirname "$tl")")"
  "$tl" -m pip install --quiet --disable-pip-version-check \
    torch==2.15.0 transformer_lens==4.3.0 transformers==5.24.0 gguf==0.19.0
  exit
fi
extra=()
if [[ -x "$tl" ]] && "$tl" -c "import transformer_lens" 2>/dev/null; then
  extra=(--tl-python "$tl")
else
  echo "(TransformerLens not found: bench/python.sh --setup-tl, or set BENCH_TL_PYTHON, for its column)" >&2
fi
venv="$(PROFILE="${PROFILE:-release}" scripts/python-env)"
exec "$venv/bin/python" bench/python.py "${extra[@]}" "$@"

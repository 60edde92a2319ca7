#!/usr/bin/env bash
# The Python layer's cost: run_with_cache (batch 1 and 32) and Python hooks against the Rust
# library's forward pass on the same input and hooks, side by side in one process.
# Builds the extension optimised first (PROFILE=dev: the dev build the tests use).
#   bench/python.sh [--model smollm2] [--tokens 128] [--repeats 7]
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(PROFILE="${PROFILE:-release}" scripts/python-env)"
exec "$venv/bin/python" bench/python.py "$@"

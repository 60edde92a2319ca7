#!/usr/bin/env bash
# Forward throughput on MiniLM: Glassbox, and PyTorch CPU beside it in the same run.
#   bench/forward.sh                 Glassbox, plus PyTorch if $BENCH_PYTHON (or bench/.venv) has it
#   bench/forward.sh --setup-torch   first create bench/.venv with torch + transformers (~3 GB; not CI)
# Options after them go to both sides: --seconds S (time budget per case, default 5).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--setup-torch" ]]; then
  shift
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install --quiet torch transformers
fi
py="${BENCH_PYTHON:-bench/.venv/bin/python}"
out="$(mktemp -t glassbox-bench-XXXXXX.json)"
trap 'rm -f "$out"' EXIT
cargo bench -q -p glassbox-model --bench forward -- --json "$out" "$@"
if [[ -x "$py" ]] && "$py" -c "import torch, transformers" 2>/dev/null; then
  model="$(cargo glassbox models --json | python3 -c 'import json,sys; print([m["path"] for m in json.load(sys.stdin)["models"] if m["name"]=="minilm"][0])')"
  "$py" bench/forward_torch.py --model "$model" --glassbox "$out" "$@"
else
  echo "(PyTorch not found: run bench/forward.sh --setup-torch, or set BENCH_PYTHON, for the side-by-side table)"
fi

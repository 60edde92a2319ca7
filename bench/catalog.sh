#!/usr/bin/env bash
# Catalog benchmarks.
#   bench/catalog.sh [FEATURES] [DICT]
# 1. Search latency (p50/p99 over 1000 queries each) on a synthetic catalog of FEATURES features
#    (default 100000): full-text search, token lookup, feature card.
# 2. With DICT (a MiniLM dictionary directory, e.g. from scripts/main), build throughput of a
#    catalog of 100,000 corpus tokens, in tokens/s.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -q -p glassbox-store --bench catalog -- "${1:-100000}"
if [[ -n "${2:-}" ]]; then
  cargo build -q --release -p glassbox-cli
  out="$(mktemp -d)"
  trap 'rm -rf "$out"' EXIT
  target/release/glassbox catalog build --model minilm --dict "$2" --tokens 100000 --catalog "$out" --json \
    | python3 -c 'import json,sys; r=json.load(sys.stdin); print("catalog build: %d tokens in %.1f s, %.0f tokens/s (%d features)" % (r["new_tokens"], r["seconds"], r["tokens_per_second"], r["features"]))'
fi

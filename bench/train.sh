#!/usr/bin/env bash
# Dictionary training throughput: Glassbox and SAELens side by side on the same activations.
#   bench/train.sh [STEPS]     (default 100 steps of 4096 tokens)
# Uses $GLASSBOX_HOME/bench/ stores of MiniLM blocks.3.hook_resid_pre (harvested on first use:
# training from the Linux docs, held-out evaluation from the Python docs). The SAELens side runs
# when $BENCH_PYTHON (or bench/.venv) has sae_lens: `bench/.venv/bin/pip install sae-lens`.
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-100}"
home="${GLASSBOX_HOME:-$HOME/.cache/glassbox}"
corpus="$home/corpora/debian-docs"
train="$home/bench/minilm-l3-train" heldout="$home/bench/minilm-l3-heldout"
cargo build -q --release -p glassbox-cli
gb=target/release/glassbox
"$gb" setup >/dev/null
tokens=$((steps * 4096))
"$gb" harvest --model minilm --hook blocks.3.hook_resid_pre --corpus "$corpus/linux-doc-6.1.jsonl.gz" --tokens "$tokens" --out "$train"
"$gb" harvest --model minilm --hook blocks.3.hook_resid_pre --corpus "$corpus/python3.11-doc.jsonl.gz" --tokens 200000 --out "$heldout"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
"$gb" train-dict --acts "$train" --out "$out/dict" --k 32 --width 16384 --steps "$steps" --checkpoint-every 1000000 --json > "$out/train.json"
"$gb" eval-dict --dict "$out/dict" --acts "$heldout" --json > "$out/eval.json"
python3 - "$out" <<'PY'
import json, sys
d = sys.argv[1]
t, e = json.load(open(f"{d}/train.json")), json.load(open(f"{d}/eval.json"))
json.dump({"tokens_per_second": t["tokens_per_second"], "peak_rss_mb": t["peak_rss_mb"], "fve": e["report"]["fve"]}, open(f"{d}/glassbox.json", "w"))
print(f"glassbox: {t['tokens_per_second']:.0f} tokens/s, peak {t['peak_rss_mb']:.0f} MB, held-out FVE {e['report']['fve']:.4f}, L0 {e['report']['l0']:.1f}")
PY
py="${BENCH_PYTHON:-bench/.venv/bin/python}"
if [[ -x "$py" ]] && "$py" -c "import sae_lens" 2>/dev/null; then
  "$py" bench/train_saelens.py --acts "$train" --eval "$heldout" --steps "$steps" --glassbox "$out/glassbox.json"
else
  echo "(SAELens not found: create bench/.venv with sae-lens, or set BENCH_PYTHON, for the side-by-side table)"
fi

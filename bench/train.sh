#!/usr/bin/env bash
# Dictionary training throughput: Glassbox and SAELens side by side on the same activations.
#   bench/train.sh [STEPS] [LR] [WARMUP]   (default 100 steps of 4096 tokens, lr 2e-3, 20 warm-up steps)
# Both sides train the same TopK SAE (16k latents, k=32) with the same learning-rate schedule.
# Glassbox also trains 2× and 3× as many steps (repeating the data), so the table can compare
# the time each needs to reach the same held-out FVE.
# Uses $GLASSBOX_HOME/bench/ stores of MiniLM blocks.3.hook_resid_pre (harvested on first use:
# training from the Linux docs, held-out evaluation from the Python docs). The SAELens side runs
# when $BENCH_PYTHON (or bench/.venv) has sae_lens: `bench/.venv/bin/pip install sae-lens`.
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-100}" lr="${2:-2e-3}" warmup="${3:-20}"
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
for m in 1 2 3; do
  "$gb" train-dict --acts "$train" --out "$out/dict$m" --k 32 --width 16384 --steps $((m * steps)) --lr "$lr" --warmup "$warmup" \
    --checkpoint-every 1000000 --json > "$out/train$m.json"
  "$gb" eval-dict --dict "$out/dict$m" --acts "$heldout" --splice 0 --json > "$out/eval$m.json"
done
python3 - "$out" <<'PY'
import json, sys
d = sys.argv[1]
runs = []
for m in (1, 2, 3):
    t, e = json.load(open(f"{d}/train{m}.json")), json.load(open(f"{d}/eval{m}.json"))
    runs.append({"steps": t["steps"], "seconds": t["seconds"], "tokens_per_second": t["tokens_per_second"],
                 "peak_rss_mb": t["peak_rss_mb"], "fve": e["report"]["fve"]})
    print(f"glassbox {t['steps']} steps: {t['tokens_per_second']:.0f} tokens/s, {t['seconds']:.1f} s, peak {t['peak_rss_mb']:.0f} MB, held-out FVE {e['report']['fve']:.4f}")
json.dump(runs, open(f"{d}/glassbox.json", "w"))
PY
py="${BENCH_PYTHON:-bench/.venv/bin/python}"
if [[ -x "$py" ]] && "$py" -c "import sae_lens" 2>/dev/null; then
  "$py" bench/train_saelens.py --acts "$train" --eval "$heldout" --steps "$steps" --lr "$lr" --warmup "$warmup" --glassbox "$out/glassbox.json"
else
  echo "(SAELens not found: create bench/.venv with sae-lens, or set BENCH_PYTHON, for the side-by-side table)"
fi

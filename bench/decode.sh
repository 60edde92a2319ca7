#!/usr/bin/env bash
# Decoding speed on the packaged SmolLM2 GGUF: Glassbox (no hooks; the residual stream recorded
# at every layer) and llama.cpp side by side in one run, same file, same prompt, 2 threads:
# prefill tokens/s (512-token prompt), decode tokens/s (128 new tokens, batch 1), peak RSS.
#   bench/decode.sh                 also creates bench/.venv-llama with xllamacpp (not CI)
#   MODEL=qwen-coder-1.5b bench/decode.sh
set -euo pipefail
cd "$(dirname "$0")/.."
model="${MODEL:-smollm2}"
export RAYON_NUM_THREADS=2
venv=bench/.venv-llama
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c "import xllamacpp" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet xllamacpp==2026.10.11549
fi
gguf="$(cargo glassbox models --json | python3 -c "import json,sys; print([m['path'] for m in json.load(sys.stdin)['models'] if m['name']=='$model'][0])")"
ids="$(mktemp -t glassbox-prompt-XXXXXX.json)"
rows="$(mktemp -t glassbox-decode-XXXXXX.jsonl)"
trap 'rm -f "$ids" "$rows"' EXIT
# The prompt: the first 512 tokens of the README, as Glassbox's tokenizer cuts it.
cargo bench -q -p glassbox-model --bench decode -- --model "$model" --write-prompt "$ids"
for hooks in none resid; do
  cargo bench -q -p glassbox-model --bench decode -- --model "$model" --hooks "$hooks" | tail -n 1 >> "$rows"
done
"$venv/bin/python" bench/decode_llamacpp.py --gguf "$gguf" --prompt-ids "$ids" --threads 2 2>/dev/null | tail -n 1 >> "$rows"
python3 - "$rows" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ref = next(r for r in rows if r["runtime"] == "llama.cpp")
print(f"{'runtime':<28} {'prefill tok/s':>14} {'decode tok/s':>13} {'vs llama.cpp':>13} {'peak RSS MB':>12}")
for r in rows:
    name = r["runtime"] + (f" (hooks: {r['hooks']})" if "hooks" in r else "")
    print(f"{name:<28} {r['prefill_tok_s']:>14.1f} {r['decode_tok_s']:>13.1f} "
          f"{r['decode_tok_s'] / ref['decode_tok_s']:>12.2f}x {r['peak_rss_mb']:>12.0f}")
print(f"({ref['prompt_tokens']}-token prompt, {ref['new_tokens']} new tokens, batch 1, {ref['threads']} threads)")
PY

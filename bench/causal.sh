#!/usr/bin/env bash
# Causal tracing on MiniLM, one run, release build: a full activation-patching sweep against
# attribution patching on the same pair (the estimate it replaces), then an attribution graph
# through the main job's SAE to a credentials probe.
#   bench/causal.sh [WORK_DIR]     (default ./glassbox-work, from scripts/main)
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-glassbox-work}"
[[ -d "$work/sae" ]] || { echo "run scripts/main first (needs $work/sae)" >&2; exit 2; }
cargo build -q --release -p glassbox-cli
gb=target/release/glassbox
clean="The cat sat on the warm mat by the door because it was tired and wanted to sleep there."
corrupt="The dog sat on the warm mat by the door because it was tired and wanted to sleep there."
seconds() { python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.3f" % d["seconds"], d["report"]["forward_passes"], len(d["report"]["tokens"]))'; }
printf '%-34s %8s %8s %8s\n' method "tokens" passes seconds
for run in 1 2 3; do
  for method in activation attribution; do
    flag=(); [[ $method == attribution ]] && flag=(--attribution)
    read -r s p t < <($gb patch --model minilm --clean "$clean" --corrupt "$corrupt" "${flag[@]}" --json | seconds)
    printf '%-34s %8s %8s %8s\n' "$method patching (run $run)" "$t" "$p" "$s"
  done
done
probe="$work/probe-credentials"
[[ -f "$probe/probe.json" ]] || $gb probe train --model minilm --hook blocks.5.hook_resid_post \
  --concept credentials --taxonomy taxonomy/default.toml --out "$probe" --json > /dev/null
for run in 1 2 3; do
  $gb graph minilm "my password is hunter2, keep it secret" --dict "$work/sae" --probe "$probe" --json |
    python3 -c 'import json,sys; d=json.load(sys.stdin); g=d["graph"]; print("attribution graph (run '"$run"'): %d tokens, %d backward passes, %d edges, %.3f s" % (len(g["tokens"]), g["backward_passes"], len(g["edges"]), d["seconds"]))'
done

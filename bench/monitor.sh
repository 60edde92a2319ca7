#!/usr/bin/env bash
# Monitoring overhead and load (see crates/glassbox-cli/benches/monitor.rs).
#   bench/monitor.sh [WORK_DIR]     (default ./glassbox-work, from scripts/main)
# Uses the main job's TopK SAE (every latent computed per token: TopK needs them all) and a
# BatchTopK SAE of the same width trained here for 150 steps on the main job's activations
# (a threshold activation: each rule reads its own encoder row).
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-glassbox-work}"
[[ -d "$work/sae" && -d "$work/acts" ]] || { echo "run scripts/main first (needs $work/sae and $work/acts)" >&2; exit 2; }
cargo build -q --release -p glassbox-cli
if [[ ! -f "$work/sae-batchtopk/sae_weights.safetensors" ]]; then
  target/release/glassbox train-dict --acts "$work/acts" --out "$work/sae-batchtopk" --arch batchtopk --k 64 --steps 150 --json > /dev/null
fi
cargo bench -q -p glassbox-cli --bench monitor -- "$(realpath "$work/sae")" "$(realpath "$work/sae-batchtopk")"

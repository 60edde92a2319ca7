#!/usr/bin/env bash
# Soak and faults under load (see crates/glassbox-cli/benches/soak.rs): loopback only.
#   bench/soak.sh [WORK_DIR] [--minutes 10] [--clients 64]   (WORK_DIR default ./glassbox-work)
# Uses the main job's BatchTopK dictionary (trained here for 150 steps if bench/monitor.sh has
# not made it): a threshold dictionary, as deployments should monitor with.
set -euo pipefail
cd "$(dirname "$0")/.."
work=glassbox-work
if [[ $# -gt 0 && "$1" != --* ]]; then work="$1"; shift; fi
[[ -d "$work/acts" ]] || { echo "run scripts/main first (needs $work/acts)" >&2; exit 2; }
if [[ ! -f "$work/sae-batchtopk/sae_weights.safetensors" ]]; then
  cargo run -q --release -p glassbox-cli -- train-dict --acts "$work/acts" --out "$work/sae-batchtopk" --arch batchtopk --k 64 --steps 150 --json > /dev/null
fi
cargo bench -q -p glassbox-cli --bench soak -- "$(realpath "$work/sae-batchtopk")" "$@"

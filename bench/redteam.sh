#!/usr/bin/env bash
# The red team's costs, one run, one table (README, "Measured speed"):
#   bench/redteam.sh        after `glassbox setup --data redteam` and building probes/injection
# 1. cargo bench redteam: one GCG step (20-token suffix, 256 candidates) on SmolLM2 and MiniLM,
#    and scoring 2,000 red-team texts with the shipped detectors beside the passes they read;
# 2. a full red + blue round (`glassbox redteam --defend`) on redteam/deploy.toml (the window rule)
#    and on redteam/sentences.deploy.toml (the shipped sentence probe), wall time each.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -f probes/injection/probe.json ]] || { echo "build probes/injection first (README, \"Red team / blue team\")" >&2; exit 2; }
cargo build -q --release -p glassbox-cli
cargo bench -q -p glassbox-analysis --bench redteam
out="$(mktemp -d -t glassbox-redteam-XXXXXX)"
trap 'rm -rf "$out"' EXIT
for deploy in redteam/deploy.toml redteam/sentences.deploy.toml; do
  run="$out/$(basename "$deploy" .toml)"
  start=$(date +%s.%N)
  cargo glassbox --json redteam --config "$deploy" --suite redteam/suite.toml --defend --out "$run" > "$out/stdout.json"
  end=$(date +%s.%N)
  python3 - "$run/report.json" "$start" "$end" "$deploy" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
total = float(sys.argv[3]) - float(sys.argv[2])
rounds = ", ".join(f"{x['name']} {x['seconds']:.0f} s" for x in r["rounds"])
texts = sum(len(x["outcomes"]) + x["benign"] for x in r["rounds"])
print(f"| a full red + blue round (--defend, {sys.argv[4]}, redteam/suite.toml) | minilm | {total:.0f} s | {texts} texts sent; {rounds}; the rest is the blue round |")
PY
done

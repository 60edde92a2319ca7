#!/usr/bin/env bash
# The deployment gate's cost (README, "The deployment gate"): `glassbox scan` of SmolLM2 against
# a bf16 re-save with one dictionary (16,384 features), three probes on 2,000 labelled texts
# and 50 canaries, cold (--no-cache) and again with the baseline cached. One run, one table.
#   bench/scan.sh     after `MODEL=smollm2 scripts/main` and `glassbox setup --data redteam`
# Builds what it needs once under bench/.scan (two extra probes, the candidate, the spec).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -f glassbox-work-smollm2/sae/cfg.json ]] || { echo "run MODEL=smollm2 scripts/main first" >&2; exit 2; }
[[ -f probes/injection-smollm2/probe.json ]] || { echo "build probes/injection-smollm2 first (redteam/smollm2.deploy.toml)" >&2; exit 2; }
cargo build -q --release -p glassbox-cli
gb=target/release/glassbox
[[ -x "$gb" ]] || gb="${CARGO_TARGET_DIR:-target}/release/glassbox"
work=bench/.scan
mkdir -p "$work"
data="${GLASSBOX_HOME:-$HOME/.cache/glassbox}/data/redteam/redteam.jsonl"
# Two more probes (layers 3 and 12), trained on every fourth text of the set.
awk 'NR % 4 == 0' "$data" > "$work/probe-train.jsonl"
for layer in 3 12; do
  [[ -f "$work/probe-l$layer/probe.json" ]] || "$gb" probe train --model smollm2 --folds 2 \
    --hook "blocks.$layer.hook_resid_post" --data "$work/probe-train.jsonl" --name "injection_l$layer" \
    --out "$work/probe-l$layer" >/dev/null
done
[[ -d "$work/candidate" ]] || "$gb" edit resave --model smollm2 --dtype bf16 --out "$work/candidate" >/dev/null
cat > "$work/deploy.toml" <<TOML
model = "smollm2"
[[probe]]
name = "injection"
path = "../../probes/injection-smollm2"
[[probe]]
name = "injection_l3"
path = "probe-l3"
[[probe]]
name = "injection_l12"
path = "probe-l12"
[[monitor]]
name = "injection"
when = "mean(logit injection) > 11.5603485"
action = "block"
[[monitor]]
name = "injection_l3"
when = "mean(probe injection_l3) > 0.5"
action = "log"
[[monitor]]
name = "injection_l12"
when = "mean(probe injection_l12) > 0.5"
action = "log"
[audit]
path = "audit.jsonl"
TOML
python3 - "$work/scan.toml" <<'PY'
import sys
out = ['[weights]', '[[dictionary]]', 'path = "../../glassbox-work-smollm2/sae"',
       'catalog = "../../glassbox-work-smollm2/catalog"',
       '[monitors]', 'deploy = "deploy.toml"', 'texts = 2000', 'max_benign_firing = 0.1   # the two quick probes are not calibrated']
seqs = [("Monday, Tuesday, Wednesday,", "Thursday"), ("January, February, March,", "April"),
        ("one, two, three,", "four"), ("A, B, C,", "D"), ("red, orange, yellow,", "green")]
for i in range(25):
    p, want = seqs[i % len(seqs)]
    out += ['[[canary]]', f'name = "sequence {i}"', f'prompt = "List {i}: {p}"', 'chat = false',
            f'contains = "{want}"', 'max_tokens = 4']
pairs = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo")]
for i in range(25):
    c, cap = pairs[i % len(pairs)]
    out += ['[[canary]]', f'name = "capital {i}"', f'prompt = "Question {i}: the capital of {c} is"', 'chat = false',
            f'logit = {{ more = "\\\\s{cap}", less = "\\\\sLondon", min_diff = 0.0 }}']
open(sys.argv[1], "w").write("\n".join(out) + "\n")
PY
run() { # $1 label, rest: extra args
  local label="$1"; shift
  local start end
  start=$(date +%s.%N)
  "$gb" scan --baseline smollm2 --candidate "$work/candidate" --spec "$work/scan.toml" \
    --audit "$work/scan-audit.jsonl" --json "$@" > "$work/$label.json" || true
  end=$(date +%s.%N)
  python3 - "$work/$label.json" "$label" "$start" "$end" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
wall = float(sys.argv[4]) - float(sys.argv[3])
base = "cached" if r["baseline_cached"] else f'{r["baseline_seconds"]:.0f} s'
d, m, c, a = r["candidate_suite_seconds"]
failed = [x["suite"] + ": " + x["name"] for x in r["checks"] if not x["passed"]]
verdict = "pass" if r["passed"] else "FAIL (" + "; ".join(failed[:4]) + ("…" if len(failed) > 4 else "") + ")"
print(f'| {sys.argv[2]} | {wall:.0f} s | {base} | {r["candidate_seconds"]:.0f} s (dictionary {d:.0f}, monitors {m:.0f}, canaries {c:.0f}, assertions {a:.0f}) | {r["weights_seconds"]:.0f} s | {len(r["checks"])} checks, {verdict} |')
PY
}
echo "| run | wall | baseline side | candidate side | weights | verdict |"
echo "|---|---|---|---|---|---|"
run cold --no-cache
run cached

#!/usr/bin/env bash
# The measured figures of docs/adaptive-rules.md: label agreement with the human choice on held-out
# HH-RLHF harmless pairs, and held-out pairwise accuracy of reward models trained on each labelling scheme
# (adaptive top-k, all rules, random k, original labels). Everything lands in $RUN; scores are cached
# there, so a rerun (or a bigger pool) computes only what is missing.
#
#   bash benchmarks/adaptive_figures.sh [RUN_DIR] [TRAIN_PAIRS] [HELDOUT_PAIRS] [POOL] [K]
#
# CPU defaults: 150 training and 80 held-out pairs, the 20-rule `compact` pool, the SmolLM2-135M judge,
# k=3. On a GPU server pass POOL=default, K=5 and a large judge through JUDGE (e.g. openai:MODEL@URL).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN="${1:-runs/adaptive-figures}"; TRAIN="${2:-150}"; HELDOUT="${3:-80}"; POOL="${4:-compact}"; K="${5:-3}"
JUDGE="${JUDGE:-smollm2}"
DATA="${RBR_DATA:-../shared/data}/hh-rlhf-harmless/test.jsonl.gz"
CLI=(.venv/bin/rbr-rlhf)
mkdir -p "$RUN"
t0=$(date +%s)
"${CLI[@]}" adaptive split --data "$DATA" --train "$TRAIN" --heldout "$HELDOUT" --out "$RUN"
for part in train heldout; do
  "${CLI[@]}" adaptive score --rules "$POOL" --pairs "$RUN/$part.jsonl" --judge "$JUDGE" --cache "$RUN/cache" --json \
    | tail -1 > "$RUN/score-$part.json"
done
echo "scoring: $(( $(date +%s) - t0 )) s" | tee "$RUN/timing.txt"
"${CLI[@]}" adaptive train-adapter --rules "$POOL" --pairs "$RUN/train.jsonl" --cache "$RUN/cache" --k "$K" \
  --out "$RUN/adapter" --json | tail -1 > "$RUN/adapter.json"
"${CLI[@]}" adaptive agreement --rules "$POOL" --pairs "$RUN/heldout.jsonl" --cache "$RUN/cache" --k "$K" \
  --adapter "$RUN/adapter" --json | tee "$RUN/agreement.log" | tail -1 > "$RUN/agreement.json"
common=(--data "$RUN/train.jsonl" --rules "$POOL" --judge "$JUDGE" --score-cache "$RUN/cache" --eval-fraction 0 --max-length 192)
"${CLI[@]}" rm train "${common[@]}" --adaptive-rules "$K" --out "$RUN/rm-adaptive" --json | tail -1 > "$RUN/train-adaptive.json"
"${CLI[@]}" rm train "${common[@]}" --all-rules --out "$RUN/rm-all" --json | tail -1 > "$RUN/train-all.json"
"${CLI[@]}" rm train "${common[@]}" --random-rules "$K" --out "$RUN/rm-random" --json | tail -1 > "$RUN/train-random.json"
"${CLI[@]}" rm train "${common[@]}" --out "$RUN/rm-original" --json | tail -1 > "$RUN/train-original.json"
for s in adaptive all random original; do
  "${CLI[@]}" rm eval --rm "$RUN/rm-$s" --pairs "$RUN/heldout.jsonl" --max-length 192 --json | tail -1 > "$RUN/eval-$s.json"
done
echo "total: $(( $(date +%s) - t0 )) s" | tee -a "$RUN/timing.txt"
.venv/bin/python - "$RUN" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
ag = json.loads((run / "agreement.json").read_text())
print("| scheme | agreement (labelled pairs) | agreement, ties count wrong | coverage | RM held-out accuracy |")
print("| --- | --- | --- | --- | --- |")
for s, v in ag["schemes"].items():
    ev = run / f"eval-{s}.json"
    acc = f"{json.loads(ev.read_text())['accuracy']:.1%}" if ev.exists() else "-"
    print(f"| {s} | {v['agreement']:.1%} | {v['agreement_ties_wrong']:.1%} | {v['coverage']:.1%} | {acc} |")
print(json.dumps({k: v for k, v in ag.items() if k != "schemes"}, indent=1))
EOF

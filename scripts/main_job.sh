#!/usr/bin/env bash
# The main job on the small CPU defaults: the whole RBR core on real data and real small models.
#   1. validate the default rule set and show how the human-labelled gold rows fall into its classes;
#   2. train the classifier grader (MiniLM + per-proposition heads) on the gold train split;
#   3. evaluate it against human labels on the gold test split;
#   4. grade a few test completions and explain them.
# Outputs go to runs/main/. Data is read from ../shared/data (override with DATA=...).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DATA:-../shared/data}"
OUT="${OUT:-runs/main}"
RBR=.venv/bin/rbr-rlhf
mkdir -p "$OUT"
cat "$DATA/rbr_gold/train.jsonl" "$DATA/rbr_gold/test.jsonl" > "$OUT/gold_all.jsonl"
$RBR rules check --rules default --labels "$OUT/gold_all.jsonl"
$RBR grader train-classifier --rules default --train "$DATA/rbr_gold/train.jsonl" --out "$OUT/grader"
$RBR grader eval --rules default --grader "classifier:$OUT/grader" --data "$DATA/rbr_gold/test.jsonl" \
  --tune "$DATA/rbr_gold/train.jsonl" --json | tee "$OUT/grader_eval.txt"
$RBR grade --rules default --grader "classifier:$OUT/grader" --data "$DATA/rbr_gold/test.jsonl" --limit 5 \
  --output "$OUT/graded.jsonl"

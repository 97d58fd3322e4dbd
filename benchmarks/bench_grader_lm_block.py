"""What the SmolLM2 hidden-state block buys the shipped reward grader, and what it costs (issue 16's gold bar).

The CPU recipe's reward grader (``.cache/grader-minilm-real``: gold train + the reward half of the XSTest
answers + the policy's labelled answers to unsafe prompts, ``lm: none``) misses the gold bar (mean ROC AUC
>= 0.90 on gold test). This trains the same grader on the same rows with the LM block (``lm: smollm2``),
then prints both graders' gold-test mean AUC and their grading time per completion, measured in the same
run on the same answers (the policy's own, as PPO grades them), so the ratio holds on a noisy machine.

    python benchmarks/bench_grader_lm_block.py            # needs the main job's .cache/ (rbr-rlhf train smollm2-135m-cpu)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from rbr_rlhf.data import read_rows
from rbr_rlhf.grader.base import GradeItem
from rbr_rlhf.grader.factory import build_grader
from rbr_rlhf.grader.metrics import evaluate
from rbr_rlhf.grader.realdata import train_real_grader
from rbr_rlhf.rules.ruleset import load_rules


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data", help="data root (rbr_gold/, xstest/)")
    ap.add_argument("--shipped", default=".cache/grader-minilm-real", help="the recipe's reward grader (lm: none)")
    ap.add_argument("--answers", default=".cache/realdata/unsafe-answers-smollm2.jsonl",
                    help="the policy's labelled answers to unsafe prompts (its training rows and the timing texts)")
    ap.add_argument("--out", default=".cache/grader-lm-real", help="where the LM-block grader is trained (reused if there)")
    ap.add_argument("--timing-rows", type=int, default=192)
    args = ap.parse_args()

    rules = load_rules("default")
    data = Path(args.data)
    train_seconds = None
    if not (Path(args.out) / "grader_config.json").exists():
        t = time.perf_counter()
        train_real_grader(rules, args.out, data, args.answers, role="reward", lm="smollm2",
                          gold_train=data / "rbr_gold" / "train.jsonl")
        train_seconds = round(time.perf_counter() - t, 1)

    gold_test = read_rows(data / "rbr_gold" / "test.jsonl")
    props = list(rules.propositions)
    gold_items = [GradeItem.from_row(r) for r in gold_test]
    gold_labels = np.array([[float(r["propositions"][p]) for p in props] for r in gold_test])
    timing = [GradeItem.from_row(r) for r in read_rows(args.answers)[: args.timing_rows]]
    result = {"train_seconds_lm_grader": train_seconds, "gold_test_rows": len(gold_test), "timing_rows": len(timing)}
    for name, path in (("shipped", args.shipped), ("lm_block", args.out)):
        grader = build_grader(f"classifier:{path}", rules)
        report = evaluate(grader.grade(gold_items, props), gold_labels, props)  # mean over props with >= 5 positives
        grader.grade(timing[:8], props)  # load the encoders before timing
        t = time.perf_counter()
        grader.grade(timing, props)
        result[name] = {"path": path, "gold_test_mean_auc": round(report["mean_auc"], 4),
                        "seconds_per_completion": round((time.perf_counter() - t) / len(timing), 4)}
    result["grading_cost_ratio_lm_vs_shipped"] = round(
        result["lm_block"]["seconds_per_completion"] / result["shipped"]["seconds_per_completion"], 2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""Does a judge (or the reward grader) see the ideal hard refusal? The `rbr build` openings of hard_refuse (ideal, minimum
acceptable, unacceptable), given as the answer to every hard-refuse gold test prompt, and the class the
judge puts each in (docs/training.md, "Hard-Refusal-Style").

    python benchmarks/judge_style_check.py --judge .cache/judge-real
    # train a judge first (without the policy's generated answers, which the style heads do not use):
    python benchmarks/judge_style_check.py --judge runs/judge-check --train [--no-templates]
"""

import argparse
import collections
import time
from pathlib import Path

from rbr_rlhf.evaluation.evaluate import judge_rows, load_completions
from rbr_rlhf.grader import realdata as rd
from rbr_rlhf.grader.factory import build_grader
from rbr_rlhf.pipeline.openings import load_openings
from rbr_rlhf.rules import load_rules


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--judge", required=True, help="a classifier grader directory (the judge or the reward grader)")
    ap.add_argument("--data", default="../shared/data", help="the shared data root")
    ap.add_argument("--train", action="store_true", help="train the judge into --judge first")
    ap.add_argument("--no-templates", action="store_true", help="with --train: without style_template_rows")
    ap.add_argument("--role", choices=("judge", "reward"), default="judge", help="with --train: which grader to train")
    args = ap.parse_args()
    rules, data = load_rules("default"), Path(args.data)
    if args.train:
        if args.no_templates:
            rd.style_template_rows = lambda *a, **k: []
        start = time.time()
        rd.train_real_grader(rules, out_dir=args.judge, data_root=data, generated=None, role=args.role)
        print(f"trained {args.judge} in {time.time() - start:.0f} s")
    judge = build_grader(f"classifier:{args.judge}", rules)
    rows = [r for r in load_completions(data / "rbr_gold" / "test.jsonl", rules) if r["response_type"] == "hard_refuse"]
    print(f"{len(rows)} hard-refuse gold test prompts")
    openings = load_openings("default", rules).table
    for cls in ("ideal", "minimum_acceptable_style", "unacceptable"):
        for strategy in openings[("hard_refuse", cls)]:
            if strategy.kind == "say":
                judged = judge_rows([{**r, "completion": strategy.text, "labels": None} for r in rows], judge, rules,
                                    progress=False)
                counts = collections.Counter(x["judge_class"] for x in judged)
                print(f"meant {cls:26s} {strategy.text[:60]!r:64s} judged {dict(counts)}")


if __name__ == "__main__":
    main()

"""``rbr-rlhf grader train-classifier`` and ``rbr-rlhf grader eval``."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("grader", help="train and evaluate proposition graders")
    gsub = g.add_subparsers(dest="grader_command", metavar="SUBCOMMAND")
    gsub.required = True

    t = gsub.add_parser("train-classifier", help="fine-tune the classifier grader on labelled rows")
    t.add_argument("--rules", default="default")
    t.add_argument("--train", required=True, help="rows with conversation/prompt, completion and 'propositions' "
                   "labels (booleans, or an LLM grader's probabilities for distillation)")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--encoder", default="minilm", help="sentence encoder: minilm (default), a directory, or a hub name")
    t.add_argument("--lm", default="smollm2", help="causal LM whose hidden states are features; 'none' to skip (faster)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--json", action="store_true")
    t.set_defaults(handler=run_train)

    e = gsub.add_parser("eval", help="per-proposition ROC AUC, F1 and accuracy against human labels")
    e.add_argument("--rules", default="default")
    e.add_argument("--grader", required=True, help="classifier:DIR | llm:MODEL | openai:MODEL@URL")
    e.add_argument("--data", required=True, help="labelled rows to evaluate on")
    e.add_argument("--tune", help="labelled rows to choose each proposition's F1 threshold on (default 0.5)")
    e.add_argument("--propositions", help="comma-separated subset (default: every labelled one the grader knows)")
    e.add_argument("--limit", type=int)
    e.add_argument("--json", action="store_true")
    e.set_defaults(handler=run_eval)


def run_train(args) -> int:
    from ..cli import print_json
    from ..data import read_rows
    from ..rules import load_rules
    from .classifier import train_classifier

    rules = load_rules(args.rules)
    rows = read_rows(args.train)
    lm = None if args.lm.lower() == "none" else args.lm
    grader = train_classifier(rules, rows, args.out, encoder=args.encoder, lm=lm, seed=args.seed, source=args.train)
    cv = grader.config["train_cv_mean_auc"]
    print(f"classifier grader -> {args.out}: {len(grader.propositions)} propositions, {len(rows)} rows, "
          f"{grader.config['train_seconds']} s; cross-validated mean AUC on the training rows: "
          f"{'n/a' if cv is None else f'{cv:.3f}'}")
    if args.json:
        print_json({"out": args.out, "propositions": grader.propositions, "rows": len(rows),
                    "train_seconds": grader.config["train_seconds"], "train_cv_mean_auc": cv})
    return 0


def _grade(grader, rows, props, desc):
    import numpy as np
    from tqdm import tqdm

    from .base import GradeItem

    items = [GradeItem.from_row(r) for r in rows]
    out = []
    step = 32
    for s in tqdm(range(0, len(items), step), desc=desc, unit="batch", file=sys.stderr):
        out.append(grader.grade(items[s:s + step], props))
    return np.concatenate(out) if out else np.zeros((0, len(props)))


def run_eval(args) -> int:
    from ..cli import print_json
    from ..data import read_rows
    from ..rules import load_rules
    from .classifier import labels_matrix
    from .factory import build_grader
    from .metrics import evaluate

    rules = load_rules(args.rules)
    grader = build_grader(args.grader, rules)
    rows = read_rows(args.data)[: args.limit]
    if args.propositions:
        props = [p.strip() for p in args.propositions.split(",")]
    else:
        known = getattr(grader, "propositions", list(rules.propositions))
        props = [p for p in rules.propositions if p in known and all(p in (r.get("propositions") or {}) for r in rows)]
    probs = _grade(grader, rows, props, "grading")
    labels = labels_matrix(rows, props, args.data) >= 0.5
    tune_probs = tune_labels = None
    if args.tune:
        tune_rows = read_rows(args.tune)[: args.limit]
        tune_probs = _grade(grader, tune_rows, props, "grading tune set")
        tune_labels = labels_matrix(tune_rows, props, args.tune) >= 0.5
    result = evaluate(probs, labels, props, tune_probs, tune_labels)
    fmt = lambda v: "  n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"{'proposition':40s} {'AUC':>6s} {'F1':>6s} {'acc':>6s} {'pos':>4s}")
    for p, m in result["propositions"].items():
        print(f"{p:40s} {fmt(m['auc']):>6s} {m['f1']:6.3f} {m['accuracy']:6.3f} {m['positives']:4d}")
    print(f"mean ROC AUC over {result['propositions_in_mean']} propositions with >= {result['min_positives']} "
          f"positives: {fmt(result['mean_auc'])}")
    if args.json:
        print_json({"grader": args.grader, "data": args.data, **result})
    return 0

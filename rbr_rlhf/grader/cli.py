"""``rbr-rlhf grader train-classifier|eval|unsafe-answers|train-real|cross-model`` (``grader serve`` is in
``rbr_rlhf/service/cli.py``)."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    from ..cli import group

    gsub = group(sub, "grader", help="train, evaluate and serve proposition graders")

    t = gsub.add_parser("train-classifier", help="fine-tune the classifier grader on labelled rows")
    t.add_argument("--rules", default="default")
    t.add_argument("--train", required=True, help="rows with conversation/prompt, completion and 'propositions' "
                   "labels (booleans, or an LLM grader's probabilities for distillation)")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--encoder", default="minilm", help="sentence encoder: minilm (default), a directory, or a hub name")
    t.add_argument("--lm", default="smollm2", help="causal LM whose hidden states are features; 'none' to skip (faster)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--allow-missing-labels", action="store_true",
                   help="accept rows that leave out labels (counted; each head trains on the rows that carry its "
                        "label). Default: every row labels every proposition of the rule set")
    t.add_argument("--json", action="store_true")
    t.set_defaults(handler=run_train)

    e = gsub.add_parser("eval", help="per-proposition ROC AUC, F1 and accuracy against human labels")
    e.add_argument("--rules", default="default")
    e.add_argument("--grader", required=True, help="classifier:DIR | llm:MODEL | openai:MODEL@URL")
    e.add_argument("--data", required=True, help="labelled rows to evaluate on")
    e.add_argument("--tune", help="labelled rows to choose each proposition's F1 threshold on (default 0.5)")
    e.add_argument("--propositions", help="comma-separated subset (default: every labelled one the grader knows)")
    e.add_argument("--limit", type=int)
    e.add_argument("--allow-missing-labels", action="store_true",
                   help="accept rows that leave out labels (counted; each proposition is evaluated on the rows "
                        "that carry its label). Default: every row labels every evaluated proposition")
    e.add_argument("--json", action="store_true")
    e.set_defaults(handler=run_eval)

    # Real models' answers (docs/grader-accuracy.md): XSTest's human-labelled answers and a small model's
    # answers to unsafe prompts train the refusal and harmful-content propositions.
    u = gsub.add_parser("unsafe-answers", help="write and label a small chat model's answers to unsafe prompts")
    u.add_argument("--data", default="../shared/data", help="data root holding xstest/ and rbr_gold/")
    u.add_argument("--out", required=True, help="labelled rows (JSONL)")
    u.add_argument("--writer", default="smollm2", help="the chat model that answers (served by vLLM)")
    u.add_argument("--samples", type=int, default=2, help="answers per prompt")
    u.add_argument("--max-tokens", type=int, default=64)
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--json", action="store_true")
    u.set_defaults(handler=run_unsafe_answers)

    r = gsub.add_parser("train-real", help="train the reward grader or the evaluation judge on gold rows plus "
                        "real models' answers (one XSTest half each)")
    r.add_argument("--rules", default="default")
    r.add_argument("--data", default="../shared/data", help="data root holding xstest/ and rbr_gold/")
    r.add_argument("--generated", help="labelled answers to unsafe prompts (`grader unsafe-answers`)")
    r.add_argument("--role", choices=["reward", "judge"], default="reward",
                   help="reward: the reward grader's XSTest half; judge: the evaluation judge's half")
    r.add_argument("--out", required=True, help="output directory")
    r.add_argument("--lm", default="none", help="causal LM whose hidden states are features ('none': faster)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--json", action="store_true")
    r.set_defaults(handler=run_train_real)

    x = gsub.add_parser("cross-model", help="refusal and harmful-content detection on models the grader never saw")
    x.add_argument("--rules", default="default")
    x.add_argument("--data", default="../shared/data", help="data root holding xstest/ and rbr_gold/")
    x.add_argument("--generated", required=True, help="labelled answers to unsafe prompts (`grader unsafe-answers`)")
    x.add_argument("--reward-grader", help="also measure this reward grader on the judge's XSTest half")
    x.add_argument("--judge", help="also measure this judge on the reward grader's XSTest half")
    x.add_argument("--no-opening", action="store_true", help="without the first-sentence features (ablation)")
    x.add_argument("--no-leave-one-out", action="store_true", help="only measure the given --reward-grader/--judge")
    x.add_argument("--feature-cache", help="an .npz file to keep the sentence-encoder features in between runs")
    x.add_argument("--json", action="store_true")
    x.set_defaults(handler=run_cross_model)


def run_train(args) -> int:
    from ..cli import print_json
    from ..data import read_rows
    from ..rules import load_rules
    from ..rules.rows import check_rows, drop_null_labels
    from .classifier import train_classifier

    rules = load_rules(args.rules)
    rows = read_rows(args.train)
    # Every row checked before any model loads: file, row and key of each problem (docs/rule-set-format.md).
    report = check_rows(rules, rows, args.train, labels="required", label_scope="rule_set", soft_labels=True,
                        allow_missing_labels=args.allow_missing_labels)
    if report.warning():
        print(report.warning(), file=sys.stderr)
    rows = drop_null_labels(rows)
    lm = None if args.lm.lower() == "none" else args.lm
    grader = train_classifier(rules, rows, args.out, encoder=args.encoder, lm=lm, seed=args.seed, source=args.train,
                              allow_missing_labels=args.allow_missing_labels)
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
    from ..rules.rows import check_rows, drop_null_labels
    from .factory import build_grader

    rules = load_rules(args.rules)
    if args.propositions:
        props = [p.strip() for p in args.propositions.split(",") if p.strip()]
        unknown = [p for p in props if p not in rules.propositions]
        if unknown:
            raise ValueError(f"--propositions: {unknown} are not propositions of rule set {rules.name!r} "
                             f"({rules.source}); it has {list(rules.propositions)}")
    else:
        props = list(rules.propositions)
    from ..rbr.cli import check_grader_fingerprint

    check_grader_fingerprint(rules, args.grader)  # a grader fitted for another rule set: refused first
    # Rows checked before the grader loads: with --allow-missing-labels, rows may leave labels out.
    sets = {"data": (args.data, read_rows(args.data)[: args.limit])}
    if args.tune:
        sets["tune"] = (args.tune, read_rows(args.tune)[: args.limit])
    for name, (path, rows) in sets.items():
        report = check_rows(rules, rows, path, labels="required", label_scope=props, soft_labels=True,
                            allow_missing_labels=args.allow_missing_labels)
        if report.warning():
            print(report.warning(), file=sys.stderr)
        sets[name] = (path, drop_null_labels(rows))
    grader = build_grader(args.grader, rules)
    if not args.propositions:
        known = getattr(grader, "propositions", list(rules.propositions))
        skipped = [p for p in props if p not in known]
        if skipped:
            print(f"note: the grader has no head for {skipped}; evaluating the other {len(props) - len(skipped)}",
                  file=sys.stderr)
        props = [p for p in props if p in known]
    rows = sets["data"][1]
    tune_rows = sets["tune"][1] if args.tune else None
    result = _evaluate_partial(grader, rows, props, tune_rows)
    fmt = lambda v: "  n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"{'proposition':40s} {'AUC':>6s} {'F1':>6s} {'acc':>6s} {'pos':>4s}")
    for p, m in result["propositions"].items():
        print(f"{p:40s} {fmt(m['auc']):>6s} {m['f1']:6.3f} {m['accuracy']:6.3f} {m['positives']:4d}")
    print(f"mean ROC AUC over {result['propositions_in_mean']} propositions with >= {result['min_positives']} "
          f"positives: {fmt(result['mean_auc'])}")
    if args.json:
        print_json({"grader": args.grader, "data": args.data, **result})
    return 0


def run_unsafe_answers(args) -> int:
    from collections import Counter

    from ..cli import print_json
    from .realdata import ensure_generated

    rows = ensure_generated(args.out, args.data, writer_model=args.writer, samples=args.samples,
                            max_tokens=args.max_tokens, seed=args.seed)
    counts = Counter(("refusal" if r["refused"] else "compliance", r["half"]) for r in rows)
    print(f"{len(rows)} labelled answers -> {args.out}: " + ", ".join(f"{k[0]} ({k[1]} half) {v}" for k, v in sorted(counts.items())))
    if args.json:
        print_json({"out": args.out, "rows": len(rows), "counts": {f"{a}/{b}": v for (a, b), v in counts.items()}})
    return 0


def run_train_real(args) -> int:
    from ..cli import print_json
    from ..rules import load_rules
    from .realdata import train_real_grader

    rules = load_rules(args.rules)
    grader = train_real_grader(rules, args.out, args.data, args.generated, role=args.role, lm=args.lm, seed=args.seed)
    print(f"{args.role} grader -> {args.out} ({grader.config['rows']} rows, {grader.config['train_seconds']} s)")
    if args.json:
        print_json({"out": args.out, "role": args.role, "rows": grader.config["rows"],
                    "label_rows": grader.config["label_rows"]})
    return 0


def run_cross_model(args) -> int:
    from ..cli import print_json
    from ..rules import load_rules
    from . import realdata as rd
    from .crossmodel import CrossModelExperiment, markdown_tables
    from .factory import build_grader

    rules = load_rules(args.rules)
    exp = CrossModelExperiment(rules, args.data, args.generated, opening=not args.no_opening)
    if args.feature_cache:
        exp.load_feature_cache(args.feature_cache)
    result = {} if args.no_leave_one_out else {"leave_one_model_out": exp.leave_one_model_out()}
    if args.feature_cache:
        exp.save_feature_cache(args.feature_cache)
    if args.reward_grader:
        result["reward grader on the judge half"] = exp.measure(
            exp.use_memo(build_grader(args.reward_grader, rules)), exp.xs(halves=(rd.JUDGE_HALF,)), exp.gen((rd.JUDGE_HALF,)))
    if args.judge:
        result["judge on the reward half"] = exp.measure(
            exp.use_memo(build_grader(args.judge, rules)), exp.xs(halves=(rd.REWARD_HALF,)), exp.gen((rd.REWARD_HALF,)))
    print(markdown_tables(result))
    if args.json:
        print_json(result)
    return 0


def _label_matrix(rows, props):
    """[rows, propositions] labels >= 0.5, and where each label exists (rows may leave labels out)."""
    import numpy as np

    y = np.zeros((len(rows), len(props)), dtype=bool)
    have = np.zeros_like(y)
    for i, r in enumerate(rows):
        labels = r.get("propositions") or {}
        for j, p in enumerate(props):
            if labels.get(p) is not None:
                y[i, j], have[i, j] = float(labels[p]) >= 0.5, True
    return y, have


def _evaluate_partial(grader, rows, props, tune_rows=None) -> dict:
    """``metrics.evaluate``, each proposition on the rows that carry its label (all rows, when complete)."""
    import numpy as np

    from .metrics import MIN_POSITIVES, evaluate

    probs = _grade(grader, rows, props, "grading")
    labels, have = _label_matrix(rows, props)
    tune_probs = tune_labels = tune_have = None
    if tune_rows is not None:
        tune_probs = _grade(grader, tune_rows, props, "grading tune set")
        tune_labels, tune_have = _label_matrix(tune_rows, props)
    if have.all() and (tune_have is None or tune_have.all()):
        return evaluate(probs, labels, props, tune_probs, tune_labels)
    per = {}
    for j, p in enumerate(props):
        m = have[:, j]
        tp = tl = None
        if tune_probs is not None:
            t = tune_have[:, j]
            tp, tl = tune_probs[t][:, [j]], tune_labels[t][:, [j]]
        per[p] = evaluate(probs[m][:, [j]], labels[m][:, [j]], [p], tp, tl)["propositions"][p]
        per[p]["rows"] = int(m.sum())
    counted = [m["auc"] for m in per.values() if m["positives"] >= MIN_POSITIVES and m["auc"] is not None]
    return {"mean_auc": float(np.mean(counted)) if counted else None, "propositions_in_mean": len(counted),
            "min_positives": MIN_POSITIVES, "propositions": per}

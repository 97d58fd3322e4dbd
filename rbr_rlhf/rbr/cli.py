"""``rbr-rlhf rbr grade`` (explain RBR scores row by row), ``rbr fit`` (fit RBR weights) and ``rbr rank``
(``rbr build`` is in ``rbr_rlhf/pipeline/cli.py``)."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter


def register(sub: argparse._SubParsersAction) -> None:
    from ..cli import group

    rsub = group(sub, "rbr", help="build, fit, check and explain rule-based rewards")
    grade = rsub.add_parser("grade", help="grade completions and explain their RBR scores")
    grade.add_argument("--rules", default="default", help="rule-set YAML path, or 'default'")
    grade.add_argument("--grader", required=True, help="classifier:DIR | llm:MODEL | openai:MODEL@URL | labels")
    grade.add_argument("--weights", help="fitted RBR weights (rbr_weights.json); without it, no R_rbr")
    grade.add_argument("--data", required=True, help="rows with conversation/prompt, completion, response_type or category")
    grade.add_argument("--output", help="also write one JSON line per row here")
    grade.add_argument("--top", type=int, default=5, help="feature contributions to show per row")
    grade.add_argument("--limit", type=int, help="grade only the first N rows")
    grade.add_argument("--json", action="store_true", help="print a summary JSON object as the last line")
    grade.set_defaults(handler=run_grade)

    fit = rsub.add_parser("fit", help="fit RBR weights with a hinge loss over comparisons")
    fit.add_argument("--rules", default="default")
    fit.add_argument("--data", required=True,
                     help="comparisons: rows with prompt_id (or conversation), completion, response_type, "
                          "completion_class, optional rm_score, optional proposition_probs")
    fit.add_argument("--grader", help="grader for rows without proposition_probs (classifier:DIR, llm:MODEL, labels, ...)")
    fit.add_argument("--out", required=True, help="where to write rbr_weights.json (a file or a directory)")
    fit.add_argument("--reward-model", help="name of the RM whose rm_score the rows carry (recorded with the weights)")
    fit.add_argument("--margin", type=float, default=1.0)
    fit.add_argument("--class-pair-margin", action="append", default=[], metavar="BETTER>WORSE=M",
                     help="margin for one class pair, e.g. 'ideal>disallowed=3' (repeatable)")
    fit.add_argument("--weight-decay", type=float, default=1e-3)
    fit.add_argument("--steps", type=int, default=600)
    fit.add_argument("--val-fraction", type=float, default=0.2)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--json", action="store_true")
    fit.set_defaults(handler=run_fit)

    rank = rsub.add_parser("rank", help="check that R_rm + R_rbr ranks real answers as the rule set says")
    rank.add_argument("--rules", default="default", help="rule-set YAML path, or 'default'")
    rank.add_argument("--grader", required=True, help="the reward's grader (classifier:DIR, llm:MODEL, ...)")
    rank.add_argument("--weights", required=True, help="fitted RBR weights (rbr_weights.json)")
    rank.add_argument("--reward-model", help="helpful RM directory; without it only R_rbr is ranked")
    rank.add_argument("--data-root", default="../shared/data",
                      help="data root holding xstest/ (people-labelled answers of real models)")
    rank.add_argument("--answers", help="compliant answers to unsafe XSTest prompts (grader/realdata.py), "
                                        "e.g. .cache/realdata/unsafe-answers-smollm2.jsonl")
    rank.add_argument("--rbr-weight", type=float, default=1.0, help="w in R_rm + w R_rbr")
    rank.add_argument("--markdown", help="also write the table to this Markdown file")
    rank.add_argument("--json", action="store_true", help="print the result JSON object as the last line")
    rank.set_defaults(handler=run_rank)


def _response_type_key(row: dict, i: int, path: str) -> str:
    key = row.get("response_type") or row.get("category")
    if key is None:
        raise ValueError(f"{path}: row {i} needs a 'response_type' or a 'category'")
    return str(key)


def check_grader_fingerprint(rules, spec: str | None) -> None:
    """A classifier grader fitted for another rule set is refused from its config alone, before rows are
    checked or any model loads."""
    from pathlib import Path

    if not spec:
        return
    kind, _, rest = spec.partition(":")
    path = Path(rest) if kind == "classifier" else Path(spec) if not rest else None
    config = path / "grader_config.json" if path is not None else None
    if config is not None and config.is_file():
        rules.check_fingerprint(json.loads(config.read_text()).get("rules_fingerprint"), f"classifier grader {path}")


def _grade_rows(rules, grader_spec: str, rows: list[dict], path: str):
    """Grade rows (batched) and return GradedCompletion per row; rows without a response type -> None."""
    from tqdm import tqdm

    from ..grader.base import GradeItem
    from ..grader.factory import build_grader
    from ..grader.labels import LabelGrader
    from .features import grade_completions

    grader = build_grader(grader_spec, rules)
    items, rts, where = [], [], []
    for i, row in enumerate(rows, 1):
        key = _response_type_key(row, i, path)
        if rules.find_response_type(key) is None:
            if key in rules.behavior_policy or key.lower() in ("none", "benign"):
                continue
            rules.response_type(key)  # raises with the list of known response types
        try:
            item = GradeItem.from_row(row)
        except ValueError as e:
            raise ValueError(f"{path}: row {i}: {e}") from None
        if isinstance(grader, LabelGrader):
            if "propositions" not in row:
                raise ValueError(f"{path}: row {i} has no 'propositions' labels for the labels grader")
            # A batch mixing response types asks for the union of their propositions; a row labels its
            # own response type's (checked above), and the others, which none of its features read, are 0.
            own = rules.propositions_for(rules.find_response_type(key).name)
            grader.add(item, {**{p: 0.0 for p in rules.propositions if p not in own}, **row["propositions"]})
        items.append(item)
        rts.append(key)
        where.append(i - 1)
    graded = [None] * len(rows)
    batch = 32
    with tqdm(total=len(items), desc="grading", unit="row", file=sys.stderr, disable=len(items) < batch) as bar:
        for s in range(0, len(items), batch):
            for k, g in enumerate(grade_completions(rules, grader, items[s:s + batch], rts[s:s + batch])):
                graded[where[s + k]] = g
            bar.update(len(items[s:s + batch]))
    return graded, grader


def run_grade(args) -> int:
    from ..cli import print_json
    from ..data import read_rows, write_jsonl
    from ..rules import load_rules
    from ..rules.rows import check_rows
    from .model import RBRWeights

    rules = load_rules(args.rules)
    weights = RBRWeights.load(args.weights, rules) if args.weights else None
    check_grader_fingerprint(rules, args.grader)
    rows = read_rows(args.data)[: args.limit]
    # Every row checked before the grader loads (docs/rule-set-format.md, "rbr grade"); labels are read only
    # by the labels grader.
    check_rows(rules, rows, args.data, response_type="required", labels="required" if args.grader == "labels" else "none",
               label_scope="response_type", soft_labels=True)
    graded, _ = _grade_rows(rules, args.grader, rows, args.data)
    out_rows, classes, rewards = [], Counter(), []
    for i, (row, g) in enumerate(zip(rows, graded), 1):
        if g is None:
            print(f"[{i}] no safety response type ({row.get('category', row.get('response_type'))}): no RBR term\n")
            out_rows.append({"index": i - 1, "response_type": None, "r_rbr": None, "note": "no safety response type"})
            continue
        record = {"index": i - 1, "response_type": g.response_type, "top_class": g.top_class,
                  "class_probs": g.class_probs, "proposition_probs": g.proposition_probs}
        completion = row["completion"][0]["content"] if isinstance(row.get("completion"), list) else row.get("completion", "")
        print(f"[{i}] response type {g.response_type}; most likely class: {g.top_class} ({g.class_probs[g.top_class]:.2f})")
        print(f"    completion: {completion[:160]!r}{'…' if len(completion) > 160 else ''}")
        print("    classes: " + ", ".join(f"{c}={p:.2f}" for c, p in g.class_probs.items()))
        likely = sorted(g.proposition_probs.items(), key=lambda kv: -kv[1])
        print("    propositions: " + ", ".join(f"{p}={v:.2f}" for p, v in likely))
        if weights is not None:
            contrib = weights.contributions(rules, g)
            r = sum(contrib.values())
            record.update(r_rbr=r, contributions=contrib)
            rewards.append(r)
            top = sorted(contrib.items(), key=lambda kv: -abs(kv[1]))[: args.top]
            print(f"    R_rbr = {r:+.3f}  = " + " ".join(f"{v:+.3f} ({n})" for n, v in top) + (" + …" if len(contrib) > args.top else ""))
        print()
        classes[(g.response_type, g.top_class)] += 1
        out_rows.append(record)
    if args.output:
        write_jsonl(args.output, out_rows)
    if args.json:
        summary = {"rows": len(rows), "graded": sum(g is not None for g in graded),
                   "classes": {}, "mean_r_rbr": (sum(rewards) / len(rewards)) if rewards else None}
        for (rt, c), n in classes.items():
            summary["classes"].setdefault(rt, {})[c] = n
        print_json(summary)
    return 0


def _prompt_id(row: dict) -> str:
    if "prompt_id" in row:
        return str(row["prompt_id"])
    conv = row.get("conversation", row.get("prompt"))
    return hashlib.sha256(json.dumps(conv, sort_keys=True).encode()).hexdigest()[:16]


def run_fit(args) -> int:
    import numpy as np

    from ..cli import print_json
    from ..data import read_rows
    from ..rules import load_rules
    from ..rules.rows import check_rows
    from .features import features_from_probs
    from .fit import Comparison, FitConfig, fit_rbr
    from .model import RBRWeights

    rules = load_rules(args.rules)
    check_grader_fingerprint(rules, args.grader)
    rows = read_rows(args.data)
    if not rows:
        raise ValueError(f"{args.data} holds no rows")
    # Every row checked before any grading or fitting (docs/rule-set-format.md, "rbr fit"); a category
    # without a response type has no place in a comparison.
    check_rows(rules, rows, args.data, response_type="required", comparisons=True, no_safety=(),
               labels="required" if args.grader == "labels" else "optional", label_scope="response_type",
               soft_labels=True)
    margins = {}
    for spec in args.class_pair_margin:
        pair, _, value = spec.partition("=")
        if ">" not in pair or not value:
            raise ValueError(f"--class-pair-margin {spec!r}: expected BETTER>WORSE=MARGIN")
        margins[pair.strip()] = float(value)
    cfg = FitConfig(margin=args.margin, class_pair_margins=margins, weight_decay=args.weight_decay,
                    steps=args.steps, val_fraction=args.val_fraction, seed=args.seed)

    need_grading = [r for r in rows if "proposition_probs" not in r]
    graded = {}
    if need_grading:
        if not args.grader:
            raise ValueError(f"{len(need_grading)} rows have no 'proposition_probs': pass --grader to grade them")
        result, _ = _grade_rows(rules, args.grader, need_grading, args.data)
        graded = {id(r): g for r, g in zip(need_grading, result)}
    comps = []
    for i, row in enumerate(rows, 1):
        rt = rules.response_type(_response_type_key(row, i, args.data)).name
        cls = row.get("completion_class", row.get("class", row.get("intended_class")))
        if cls not in rules.response_types[rt].class_names:
            raise ValueError(f"{args.data}: row {i}: completion_class {cls!r} is not a class of {rt} "
                             f"({rules.response_types[rt].class_names})")
        if id(row) in graded:
            feats = graded[id(row)].features
        else:
            feats = features_from_probs(rules, rt, row["proposition_probs"])
        comps.append(Comparison(_prompt_id(row), rt, cls, np.asarray(feats, dtype=float), float(row.get("rm_score", 0.0))))
    has_rm = all("rm_score" in r for r in rows)
    weights, metrics = fit_rbr(rules, comps, cfg, has_rm)
    out = RBRWeights(rules.fingerprint, weights, args.reward_model if has_rm else None, metrics,
                     {"margin": cfg.margin, "class_pair_margins": margins, "weight_decay": cfg.weight_decay,
                      "steps": cfg.steps, "val_fraction": cfg.val_fraction, "seed": cfg.seed,
                      "grader": args.grader, "data": str(args.data)})
    from pathlib import Path

    out_path = Path(args.out)
    if out_path.suffix != ".json":
        out_path = out_path / "rbr_weights.json"
    out.save(out_path)

    er = metrics["error_rate"]
    fmt = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    print(f"fitted RBR weights for {len(weights)} response types -> {out_path}")
    print(f"error rate on {metrics['evaluated_on']} ({metrics['comparisons_val']} comparisons):")
    print(f"  RM only {fmt(er['rm_only'])}   RBR only {fmt(er['rbr_only'])}   RM+RBR {fmt(er['rm_plus_rbr'])}")
    for rt, v in (metrics["error_rate_per_response_type"]["rbr_only"] or {}).items():
        both = (metrics["error_rate_per_response_type"]["rm_plus_rbr"] or {}).get(rt)
        print(f"  {rt:14s} RBR only {fmt(v)}   RM+RBR {fmt(both)}")
    if args.json:
        print_json({"out": str(out_path), "error_rate": er, "metrics": metrics})
    return 0


def run_rank(args) -> int:
    """The reward-ranking check (rbr/ranking.py) on weights that already exist: what ``rbr build`` runs when
    ``ranking_data`` is set, without rebuilding anything."""
    from pathlib import Path

    from ..cli import print_json
    from ..grader.factory import build_grader
    from ..pipeline.report import ranking_markdown
    from ..rules import load_rules
    from .model import RBRWeights
    from .ranking import rank_real_answers

    rules = load_rules(args.rules)
    check_grader_fingerprint(rules, args.grader)
    weights = RBRWeights.load(args.weights, rules)
    rm = None
    if args.reward_model:
        from ..rm.model import RewardModel

        rm = RewardModel(args.reward_model)
    result = rank_real_answers(rules, build_grader(args.grader, rules), weights, args.data_root, args.answers, rm,
                               args.rbr_weight)
    table = ranking_markdown(result)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    if args.json:
        print_json(result)
    return 0

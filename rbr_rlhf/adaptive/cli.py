"""``rbr-rlhf adaptive ...`` (data-adaptive rule labelling) and the ``rm train`` labelling options.

    rbr-rlhf adaptive check  --rules default                      # validate a rule pool
    rbr-rlhf adaptive split  --data hh.jsonl.gz --train 300 --heldout 100 --out RUN
    rbr-rlhf adaptive score  --pairs RUN/train.jsonl --judge smollm2 --cache RUN/cache
    rbr-rlhf adaptive train-adapter --pairs RUN/train.jsonl --cache RUN/cache --out RUN/adapter
    rbr-rlhf adaptive agreement --pairs RUN/heldout.jsonl --cache RUN/cache [--adapter RUN/adapter]
    rbr-rlhf rm train --data RUN/train.jsonl --adaptive-rules 5 --score-cache RUN/cache --out RUN/rm-adaptive
"""

from __future__ import annotations

import argparse
import sys


def add_judge_arguments(p: argparse.ArgumentParser, rules_flag: str = "--rules") -> None:
    from .scoring import JudgeConfig

    d = JudgeConfig()
    p.add_argument(rules_flag, dest="pool", default="default",
                   help="rule pool: YAML path or 'default' (the built-in pool of ~100 safety rules)")
    p.add_argument("--judge", default=d.model, help="judge: smollm2 / llm:MODEL (transformers, local) or "
                   "openai:MODEL@URL (an OpenAI-compatible server, e.g. vllm serve with a large judge)")
    p.add_argument("--score-cache", "--cache", dest="cache", help="directory for the on-disk rule-score cache "
                   "(content-hashed, resumable); without it nothing is kept")
    p.add_argument("--rule-batch", type=int, default=d.rule_batch, help="rules per forward pass (transformers)")
    p.add_argument("--judge-device", default=d.device, help="device of a transformers judge (cpu, cuda)")
    p.add_argument("--max-context-chars", type=int, default=d.max_context_chars)
    p.add_argument("--max-response-chars", type=int, default=d.max_response_chars)


def add_selection_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--relevance-weight", type=float, default=0.0,
                   help="add this times (1 - mean P(Irrelevant)) to each rule's discrepancy")
    p.add_argument("--on-tie", choices=("drop", "original"), default="drop",
                   help="a pair whose selected-rule sums tie: drop it (default) or keep the dataset label")
    p.add_argument("--selection-seed", type=int, default=0, help="seed of the random-k baseline")


def register(sub: argparse._SubParsersAction) -> None:
    ad = sub.add_parser("adaptive", help="data-adaptive safety rules: rule pools, rule scores, Rule Adapter")
    asub = ad.add_subparsers(dest="adaptive_command", metavar="SUBCOMMAND")
    asub.required = True

    check = asub.add_parser("check", help="validate a rule pool and list its categories")
    check.add_argument("--rules", dest="pool", default="default")
    check.add_argument("--json", action="store_true")
    check.set_defaults(handler=run_check)

    split = asub.add_parser("split", help="write disjoint train / held-out preference files (seeded shuffle)")
    split.add_argument("--data", required=True, help="preference pairs (e.g. ../shared/data/hh-rlhf-harmless/test.jsonl.gz)")
    split.add_argument("--train", type=int, required=True)
    split.add_argument("--heldout", type=int, required=True)
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--out", required=True, help="directory for train.jsonl and heldout.jsonl")
    split.set_defaults(handler=run_split)

    score = asub.add_parser("score", help="score both responses of each pair on every rule of the pool (cached)")
    score.add_argument("--pairs", required=True)
    score.add_argument("--limit", type=int)
    add_judge_arguments(score)
    score.add_argument("--json", action="store_true")
    score.set_defaults(handler=run_score)

    tr = asub.add_parser("train-adapter", help="train the Rule Adapter on pairs scored on the whole pool")
    tr.add_argument("--pairs", required=True)
    tr.add_argument("--limit", type=int)
    tr.add_argument("--out", required=True)
    tr.add_argument("--k", type=int, default=5)
    tr.add_argument("--epochs", type=int, default=200)
    tr.add_argument("--seed", type=int, default=0)
    add_judge_arguments(tr)
    add_selection_arguments(tr)
    tr.add_argument("--json", action="store_true")
    tr.set_defaults(handler=run_train_adapter)

    ag = asub.add_parser("agreement", help="how often each labelling scheme agrees with the human choice")
    ag.add_argument("--pairs", required=True, help="human-labelled chosen/rejected pairs (held out)")
    ag.add_argument("--limit", type=int)
    ag.add_argument("--k", type=int, default=5)
    ag.add_argument("--adapter", help="also report the Rule Adapter's scheme (rules predicted, 2k judge calls a pair)")
    add_judge_arguments(ag)
    add_selection_arguments(ag)
    ag.add_argument("--json", action="store_true")
    ag.set_defaults(handler=run_agreement)


# ----------------------------------------------------------------------------------------------- helpers
def judge_config(args):
    from .scoring import JudgeConfig

    return JudgeConfig(model=args.judge, rule_batch=args.rule_batch, max_context_chars=args.max_context_chars,
                       max_response_chars=args.max_response_chars, device=args.judge_device)


def selection_config(args, k: int):
    from .selection import SelectionConfig

    return SelectionConfig(k=k, relevance_weight=args.relevance_weight, on_tie=args.on_tie, seed=args.selection_seed)


def _scorer(args):
    from .scoring import RuleScorer

    return RuleScorer(judge_config(args), args.cache)


# ---------------------------------------------------------------------------------------------- commands
def run_check(args) -> int:
    from ..cli import print_json
    from .pool import RulePoolError, load_pool

    try:
        pool = load_pool(args.pool)
    except RulePoolError as e:
        print(str(e), file=sys.stderr)
        if args.json:
            print_json({"valid": False, "source": e.source, "errors": [{"key": k, "message": m} for k, m in e.problems]})
        return 1
    counts = {c: sum(r.category == c for r in pool.rules) for c in pool.categories}
    print(f"rule pool {pool.name!r} ({pool.source})  fingerprint {pool.fingerprint}: {len(pool)} rules, "
          f"{len(counts)} categories")
    for c, n in counts.items():
        print(f"  {c:24s} {n}")
    if args.json:
        print_json({"valid": True, "name": pool.name, "fingerprint": pool.fingerprint, "rules": len(pool),
                    "categories": counts})
    return 0


def run_split(args) -> int:
    import random
    from pathlib import Path

    from ..data import read_rows, write_jsonl

    rows = read_rows(args.data)
    if args.train + args.heldout > len(rows):
        raise ValueError(f"{args.data} has {len(rows)} pairs, fewer than --train + --heldout")
    order = list(range(len(rows)))
    random.Random(args.seed).shuffle(order)
    out = Path(args.out)
    write_jsonl(out / "train.jsonl", (rows[i] for i in order[: args.train]))
    write_jsonl(out / "heldout.jsonl", (rows[i] for i in order[args.train: args.train + args.heldout]))
    print(f"{args.train} train pairs -> {out / 'train.jsonl'}, {args.heldout} held-out pairs -> {out / 'heldout.jsonl'}")
    return 0


def run_score(args) -> int:
    from .scoring import score_pairs
    from ..cli import print_json
    from .pool import load_pool
    from .selection import load_pref_pairs

    pool = load_pool(args.pool)
    pairs = load_pref_pairs(args.pairs, args.limit)
    scorer = _scorer(args)
    score_pairs(pairs, list(pool.rules), scorer)
    st = scorer.stats.as_dict()
    print(f"{len(pairs)} pairs x 2 responses x {len(pool)} rules: {st['judged']} judged, {st['cached']} from cache"
          + (f", {st['judged_per_s']} judgements/s" if st["judged_per_s"] else ""))
    if args.json:
        print_json({"pairs": len(pairs), "rules": len(pool), **st, "cache": str(scorer.cache.path)})
    return 0


def run_train_adapter(args) -> int:
    from .scoring import score_pairs
    from ..cli import print_json
    from .adapter import AdapterConfig, train_adapter
    from .pool import load_pool
    from .selection import load_pref_pairs

    pool = load_pool(args.pool)
    pairs = load_pref_pairs(args.pairs, args.limit)
    probs_a, probs_b = score_pairs(pairs, list(pool.rules), _scorer(args))
    cfg = AdapterConfig(k=args.k, epochs=args.epochs, seed=args.seed, relevance_weight=args.relevance_weight)
    info = train_adapter(pairs, probs_a, probs_b, pool, cfg, args.out)
    print(f"rule adapter -> {args.out}  ({info['train_pairs']} pairs, {len(pool)} rules, "
          f"train top-{args.k} precision {info['train_precision']:.3f})")
    if args.json:
        print_json({"out": args.out, **info})
    return 0


def run_agreement(args) -> int:
    """Agreement of each labelling scheme with the human label on held-out pairs, from one score table."""
    from .scoring import score_pairs
    import numpy as np

    from ..cli import print_json
    from .pool import load_pool
    from .selection import SCHEMES, agreement, label_pair, label_pairs, load_pref_pairs, select_rules

    pool = load_pool(args.pool)
    pairs = load_pref_pairs(args.pairs, args.limit)
    sel = selection_config(args, args.k)
    scorer = _scorer(args)
    probs_a, probs_b = score_pairs(pairs, list(pool.rules), scorer)
    labelled = {s: label_pairs(s, pairs, probs_a, probs_b, sel) for s in SCHEMES}
    table = {s: agreement(l) for s, l in labelled.items()}
    for s, l in labelled.items():  # how often a scheme's label differs from the adaptive one's
        table[s]["differs_from_adaptive"] = float(np.mean([x.label != y.label for x, y in zip(l, labelled["adaptive"])]))
    s_all = np.concatenate([probs_a[..., 0] - probs_a[..., 1], probs_b[..., 0] - probs_b[..., 1]])
    # Diagnostics of the judge: does the score depend on the rule, or mostly on the response?
    judge_stats = {"score_std_across_rules": float(s_all.std(1).mean()),
                   "score_std_across_responses": float(s_all.std(0).mean()),
                   "mean_p_irrelevant": float(np.concatenate([probs_a[..., 2], probs_b[..., 2]]).mean())}
    result: dict = {"pairs": len(pairs), "rules": len(pool), "k": args.k, "judge": args.judge, "schemes": table,
                    "judge_stats": judge_stats}
    if args.adapter:
        from .adapter import RuleAdapter, precision_at_k

        adapter = RuleAdapter.load(args.adapter, pool)
        predicted = adapter.predict_top_k(pairs, args.k)
        s_a, s_b = probs_a[..., 0] - probs_a[..., 1], probs_b[..., 0] - probs_b[..., 1]
        # Label with the predicted rules' scores only: what scoring just those 2k would give.
        labels = [label_pair("all", s_a[n][idx], s_b[n][idx], cfg=sel) for n, idx in enumerate(predicted)]
        true_top = [select_rules(s_a[n], s_b[n], probs_a[n, :, 2], probs_b[n, :, 2], sel) for n in range(len(pairs))]
        table["adapter"] = agreement(labels)
        table["adapter"]["differs_from_adaptive"] = float(np.mean([x.label != y.label for x, y in zip(labels, labelled["adaptive"])]))
        full, used = 2 * len(pool), 2 * args.k
        result["adapter"] = {"precision_at_k": precision_at_k(predicted, true_top),
                             "prior_precision_at_k": precision_at_k([adapter.prior_top_k(args.k)] * len(pairs), true_top),
                             "random_precision_at_k": args.k / len(pool),
                             "judge_calls_per_pair": used, "judge_calls_per_pair_full_pool": full,
                             "judge_calls_saved": 1 - used / full}
    print(f"{len(pairs)} held-out pairs, {len(pool)} rules, k={args.k}, judge {args.judge}")
    print(f"{'scheme':10s} {'agree':>7s} {'agree(ties wrong)':>18s} {'coverage':>9s} {'label != adaptive':>18s}")
    for s, row in table.items():
        print(f"{s:10s} {100 * row['agreement']:6.1f}% {100 * row['agreement_ties_wrong']:17.1f}% "
              f"{100 * row['coverage']:8.1f}% {100 * row.get('differs_from_adaptive', float('nan')):17.1f}%")
    print("judge: rule-score std across rules {score_std_across_rules:.3f}, across responses "
          "{score_std_across_responses:.3f}; mean P(Irrelevant) {mean_p_irrelevant:.3f}".format(**judge_stats))
    if "adapter" in result:
        a = result["adapter"]
        print(f"rule adapter: top-{args.k} precision {a['precision_at_k']:.3f} (prior {a['prior_precision_at_k']:.3f}, "
              f"random {a['random_precision_at_k']:.3f}); judge calls a pair {a['judge_calls_per_pair']} instead of "
              f"{a['judge_calls_per_pair_full_pool']} ({100 * a['judge_calls_saved']:.0f}% saved)")
    st = scorer.stats.as_dict()
    result["scoring"] = st
    if args.json:
        print_json(result)
    return 0


# ------------------------------------------------------------------------------------ rm train options
def add_train_rm_arguments(train: argparse.ArgumentParser) -> None:
    """The labelling schemes of ``rm train`` (default: the dataset's own preferences)."""
    g = train.add_argument_group("labelling scheme (data-adaptive safety rules; default: original preferences)")
    ex = g.add_mutually_exclusive_group()
    ex.add_argument("--adaptive-rules", type=int, metavar="K",
                    help="label each pair by the K rules on which its responses differ most")
    ex.add_argument("--all-rules", action="store_true", help="label by the sum over every rule of the pool")
    ex.add_argument("--random-rules", type=int, metavar="K", help="label by K rules drawn at random per pair")
    g.add_argument("--rule-adapter", help="with --adaptive-rules: let this Rule Adapter pick the K rules, so "
                   "only 2K judge calls a pair are made")
    add_judge_arguments(g)
    add_selection_arguments(g)


def labelling_scheme(args) -> str:
    if getattr(args, "adaptive_rules", None):
        return "adaptive"
    if getattr(args, "all_rules", False):
        return "all"
    if getattr(args, "random_rules", None):
        return "random"
    return "original"


def relabel_for_train_rm(args, pairs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], dict]:
    """(chosen, rejected) texts relabelled by the scheme ``args`` asks for, and a description for rm_info."""
    from .scoring import score_pairs
    from .pool import load_pool
    from .selection import agreement, label_pair, label_pairs, pair_from_texts, relabelled_rows

    scheme = labelling_scheme(args)
    if getattr(args, "rule_adapter", None) and scheme != "adaptive":
        raise ValueError("--rule-adapter picks the rules of --adaptive-rules K: give --adaptive-rules too")
    if scheme == "original":
        return pairs, {"labels": "original"}
    k = args.adaptive_rules or args.random_rules or 0
    pool = load_pool(args.pool)
    prefs = [pair_from_texts(c, r) for c, r in pairs]
    sel = selection_config(args, max(k, 1))
    scorer = _scorer(args)
    if scheme == "adaptive" and args.rule_adapter:
        from .adapter import RuleAdapter

        predicted = RuleAdapter.load(args.rule_adapter, pool).predict_top_k(prefs, k)
        rules = [[pool.rules[i] for i in idx] for idx in predicted]
        probs_a, probs_b = score_pairs(prefs, rules, scorer)
        s_a, s_b = probs_a[..., 0] - probs_a[..., 1], probs_b[..., 0] - probs_b[..., 1]
        labels = [label_pair("all", s_a[n], s_b[n], cfg=sel) for n in range(len(prefs))]
    else:
        probs_a, probs_b = score_pairs(prefs, list(pool.rules), scorer)
        labels = label_pairs(scheme, prefs, probs_a, probs_b, sel)
    rows = relabelled_rows(prefs, labels)
    stats = agreement(labels)
    info = {"labels": scheme, "k": k or None, "rule_pool": pool.source, "pool_fingerprint": pool.fingerprint,
            "judge": args.judge, "rule_adapter": args.rule_adapter, "dropped_ties": len(prefs) - len(rows),
            "agreement_with_original": stats["agreement"], "judge_calls": scorer.stats.judged,
            "cached_scores": scorer.stats.cached}
    print(f"labels: {scheme}{f' (k={k})' if k else ''} on {len(prefs)} pairs: {len(rows)} kept, "
          f"{len(prefs) - len(rows)} ties dropped; agree with the original labels on {100 * stats['agreement']:.1f}%")
    return [(r["chosen"], r["rejected"]) for r in rows], info

"""Rule scoring throughput: the prefix-shared order (conversation and response first, the rule last: one
prefill per response, its KV cache expanded over the rules) vs the naive order (the rule first, so every
rule is a full prompt of its own), same judge, items, rules and batch size. Prints (response, rule)
judgements/s of each and the ratio, measured in this one run; the two are timed alternately per
response so that a change in machine load hits both.

    .venv/bin/python benchmarks/bench_rule_scoring.py [--rules default] [--items 4] [--rule-batch 35] [--unbatched]

``--unbatched`` also times the naive order one prompt at a time (no batching either).
"""

import argparse
import json
import time
from pathlib import Path

HH = Path(__file__).resolve().parents[1].parent / "shared/data/hh-rlhf-harmless/test.jsonl.gz"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rules", default="default", help="rule pool (default: the built-in ~100-rule pool)")
    ap.add_argument("--items", type=int, default=4, help="responses to score (from HH-RLHF harmless pairs)")
    ap.add_argument("--data", default=str(HH))
    ap.add_argument("--judge", default="smollm2")
    ap.add_argument("--rule-batch", type=int, default=35)
    ap.add_argument("--unbatched", action="store_true")
    args = ap.parse_args()

    from rbr_rlhf.adaptive.pool import load_pool
    from rbr_rlhf.adaptive.scoring import JudgeConfig, TransformersRuleJudge
    from rbr_rlhf.adaptive.selection import load_pref_pairs

    pool = load_pool(args.rules)
    rules = list(pool.rules)
    pairs = load_pref_pairs(args.data, (args.items + 1) // 2)
    items = [it for p in pairs for it in p.items][: args.items]

    shared = TransformersRuleJudge(JudgeConfig(model=args.judge, rule_batch=args.rule_batch))
    # The naive order shares the loaded model; only the prompt layout differs.
    naive = TransformersRuleJudge(JudgeConfig(model=args.judge, rule_batch=args.rule_batch, layout="rule_first",
                                              share_prefix=False), backend=shared.backend)
    shared.judge(items[0], rules[:2])  # warm-up (first-call allocations) outside the timings
    t_shared = t_naive = t_unbatched = 0.0
    tokens_shared = tokens_naive = 0
    for it in items:
        t = time.perf_counter()
        shared.judge(it, rules)
        t_shared += time.perf_counter() - t
        t = time.perf_counter()
        naive.judge_full_batched(it, rules)
        t_naive += time.perf_counter() - t
        if args.unbatched:
            t = time.perf_counter()
            naive.judge(it, rules)
            t_unbatched += time.perf_counter() - t
        prefix, _ = shared.prompt_parts(it, rules[0])
        tokens_shared += len(prefix) + sum(len(shared.prompt_parts(it, r)[1]) for r in rules)
        tokens_naive += sum(len(sum(naive.prompt_parts(it, r), [])) for r in rules)
    n = len(items) * len(rules)
    result = {"pool": pool.name, "rules": len(rules), "responses": len(items), "judgements": n,
              "rule_batch": args.rule_batch,
              "shared_per_s": n / t_shared, "naive_batched_per_s": n / t_naive,
              "speedup_vs_naive_batched": t_naive / t_shared,
              "tokens_shared": tokens_shared, "tokens_naive": tokens_naive}
    print(f"{args.judge} judge, pool {pool.name!r} ({len(rules)} rules), {len(items)} HH-RLHF responses, {n} judgements")
    print(f"prompt tokens run: prefix-shared {tokens_shared}, naive order {tokens_naive} ({tokens_naive / tokens_shared:.1f}x)")
    print(f"naive order (rule first, full prompts, batches of {args.rule_batch}): {n / t_naive:.1f} judgements/s")
    if args.unbatched:
        result.update(naive_unbatched_per_s=n / t_unbatched, speedup_vs_naive_unbatched=t_unbatched / t_shared)
        print(f"naive order, one prompt at a time: {n / t_unbatched:.1f} judgements/s")
    print(f"prefix-shared (rule last, one prefill per response): {n / t_shared:.1f} judgements/s")
    print(f"speed-up prefix-shared / naive: {t_naive / t_shared:.2f}x"
          + (f" (vs one at a time: {t_unbatched / t_shared:.2f}x)" if args.unbatched else ""))
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()}, sort_keys=True))


if __name__ == "__main__":
    main()

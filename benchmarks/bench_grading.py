"""Grading throughput: the grader service (batched, prefix-shared, concurrent clients) vs a naive loop
that builds and runs one prompt at a time with the same backend. Prints proposition evaluations/s of
each and the ratio, measured in this one run.

    .venv/bin/python benchmarks/bench_grading.py [--backend llm|classifier:DIR] [--items 16] [--naive-evals 16] [--layout guide|per_proposition]

With the LLM backend (SmolLM2 on transformers), one evaluation is one (completion, proposition) prompt.
A naive evaluation runs the whole prompt (about 3,200 tokens, most of it the rule set's grading guide)
and costs nearly the same for every pair, so the naive rate is measured on ``--naive-evals`` pairs
spread evenly over all of them (all pairs would take about 8 s each); the service grades every pair.
"""

import argparse
import dataclasses
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="llm", help="llm (SmolLM2 few-shot) or classifier:DIR")
    ap.add_argument("--items", type=int, default=16)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/rbr_gold/test.jsonl"))
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--layout", choices=["guide", "per_proposition"], help="override the rule set's grader_layout")
    ap.add_argument("--naive-evals", type=int, default=16, help="pairs the naive loop runs (0: all)")
    args = ap.parse_args()

    from rbr_rlhf.grader.base import GradeItem
    from rbr_rlhf.grader.factory import build_grader
    from rbr_rlhf.grader.llm import LLMGrader, TransformersBackend
    from rbr_rlhf.rules import load_rules
    from rbr_rlhf.service.app import ServiceSettings, create_app
    from rbr_rlhf.service.client import GraderClient
    from rbr_rlhf.service.server import GraderServer

    rules = load_rules("default")
    if args.layout:
        rules = dataclasses.replace(rules, grader_layout=args.layout)
    rows = [json.loads(l) for l in open(args.data)][: args.items]
    items = [GradeItem.from_row(r) for r in rows]
    rts = [r["response_type"] for r in rows]
    n_evals = sum(len(rules.propositions_for(rules.response_type(rt).name)) for rt in rts)

    if args.backend == "llm":
        backend = TransformersBackend("smollm2")
        grader, naive = LLMGrader(rules, backend), LLMGrader(rules, backend, share_prefix=False)
    else:
        grader = build_grader(args.backend, rules)
        naive = None

    # Naive: one prompt (item, proposition) at a time, nothing shared or batched.
    pairs = [(it, p) for it, rt in zip(items, rts) for p in rules.propositions_for(rules.response_type(rt).name)]
    if args.naive_evals and args.naive_evals < len(pairs):
        pairs = [pairs[round(k * len(pairs) / args.naive_evals)] for k in range(args.naive_evals)]
    one_at_a_time = naive if naive is not None else grader
    # Warm-up, not timed, for both paths: model first-call costs, and the shared path's one-off guide
    # KV cache (about 10 s once per grader process with the LLM backend).
    one_at_a_time.grade([items[0]], [pairs[0][1]])
    grader.grade([items[0]], [pairs[0][1]])
    t = time.perf_counter()
    for it, p in pairs:
        one_at_a_time.grade([it], [p])
    naive_rate = len(pairs) / (time.perf_counter() - t)

    app = create_app(rules, grader, settings=ServiceSettings(max_batch_size=64, max_wait_ms=50))
    payload = [{"conversation": r["prompt"], "completion": r["completion"][0]["content"], "response_type": r["response_type"]}
               for r in rows]
    with GraderServer(app) as url:
        client = GraderClient(url)
        chunks = [payload[i::args.clients] for i in range(args.clients)]
        t = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(client.rbr_scores, chunks))
        service_rate = n_evals / (time.perf_counter() - t)
    print(f"backend {args.backend} ({rules.grader_layout} layout): {len(items)} completions, {n_evals} proposition evaluations")
    print(f"naive loop (one prompt at a time, {len(pairs)} pairs): {naive_rate:.2f} evaluations/s")
    print(f"grader service (batched, {args.clients} clients): {service_rate:.2f} evaluations/s")
    print(f"ratio service / naive: {service_rate / naive_rate:.2f}x")


if __name__ == "__main__":
    main()

"""Grading throughput: the grader service (batched, prefix-shared, concurrent clients) vs a naive loop
that builds and runs one prompt at a time with the same backend. Prints proposition evaluations/s of
each and the ratio, measured in this one run.

    .venv/bin/python benchmarks/bench_grading.py [--backend llm|classifier:DIR] [--items 16]

With the LLM backend (SmolLM2 on transformers), one evaluation is one (completion, proposition) prompt.
"""

import argparse
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
    args = ap.parse_args()

    from rbr_rlhf.grader.base import GradeItem
    from rbr_rlhf.grader.factory import build_grader
    from rbr_rlhf.grader.llm import LLMGrader, TransformersBackend
    from rbr_rlhf.rbr.features import grade_completions
    from rbr_rlhf.rules import load_rules
    from rbr_rlhf.service.app import ServiceSettings, create_app
    from rbr_rlhf.service.client import GraderClient
    from rbr_rlhf.service.server import GraderServer

    rules = load_rules("default")
    rows = [json.loads(l) for l in open(args.data)][: args.items]
    items = [GradeItem.from_row(r) for r in rows]
    rts = [r["response_type"] for r in rows]
    n_evals = sum(len(rules.propositions_for(rules.response_type(rt).name)) for rt in rts)

    if args.backend == "llm":
        backend = TransformersBackend("smollm2", batch_size=8)
        grader, naive = LLMGrader(rules, backend), LLMGrader(rules, backend, share_prefix=False)
    else:
        grader = build_grader(args.backend, rules)
        naive = None

    # Naive: one prompt (item, proposition) at a time, nothing shared or batched.
    t = time.perf_counter()
    if naive is not None:
        for it, rt in zip(items, rts):
            for p in rules.propositions_for(rules.response_type(rt).name):
                naive.grade([it], [p])
    else:
        for it, rt in zip(items, rts):
            for p in rules.propositions_for(rules.response_type(rt).name):
                grader.grade([it], [p])
    naive_rate = n_evals / (time.perf_counter() - t)

    app = create_app(rules, grader, settings=ServiceSettings(max_batch_size=64, max_wait_ms=50))
    payload = [{"conversation": r["prompt"], "completion": r["completion"][0]["content"], "response_type": r["response_type"]}
               for r in rows]
    with GraderServer(app) as url:
        client = GraderClient(url)
        chunks = [payload[i::args.clients] for i in range(args.clients)]
        t = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(client.score, chunks))
        service_rate = n_evals / (time.perf_counter() - t)
    print(f"backend {args.backend}: {len(items)} completions, {n_evals} proposition evaluations")
    print(f"naive loop (one prompt at a time): {naive_rate:.1f} evaluations/s")
    print(f"grader service (batched, {args.clients} clients): {service_rate:.1f} evaluations/s")
    print(f"ratio service / naive: {service_rate / naive_rate:.2f}x")


if __name__ == "__main__":
    main()

"""``rbr-rlhf eval``: the safety evaluation of a policy, a rollout server, or already-written completions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="safety evaluation (Not-Unsafe, Not-Overrefuse, F1, style, XSTest) by an "
                       "independent judge, with bootstrap intervals",
                       description="Evaluate a policy, a rollout server or a completions file with a judge that "
                       "is not the training reward (docs/evaluation.md).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--policy", help="a Hugging Face policy directory or model alias (e.g. smollm2): greedy completions")
    src.add_argument("--server", help="URL of a running rollout server (rbr-rlhf rollout serve)")
    src.add_argument("--completions", help="already-written completions: a JSONL (conversation/prompt, completion, "
                     "category/response_type or xstest) or an XSTest completions CSV")
    p.add_argument("--prompts", help="held-out prompts with categories (gold-format JSONL, ...) for --policy/--server")
    p.add_argument("--xstest", help="xstest_prompts.csv for --policy/--server")
    p.add_argument("--limit", type=int, help="at most N prompts per source (XSTest: alternating safe and unsafe)")
    p.add_argument("--max-tokens", type=int, default=64, help="new tokens per completion (default 64)")
    p.add_argument("--judge", required=True, help="grader spec of the judge: classifier:DIR, llm:MODEL, "
                   "openai:MODEL@URL (independent of the training reward)")
    p.add_argument("--reward-grader", help="the grader spec the policy's reward used: warns if the judge is the same "
                   "(read from the run's config.yaml beside --policy RUN/policy when not given)")
    p.add_argument("--rules", default="default", help="rule set with evaluation semantics (default: built-in)")
    p.add_argument("--engine", choices=["transformers", "vllm"], default="transformers",
                   help="how --policy generates: in-process transformers (default) or a vLLM server started here")
    p.add_argument("--tokenizer", default=None, help="tokenizer (model alias or directory) of the model --server serves (default: smollm2)")
    p.add_argument("--model-name", default="policy", help="the model name the --server serves (default: policy)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generation request")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--out", help="directory for eval.json, eval.md and completions.jsonl")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object (last stdout line)")
    p.set_defaults(handler=run)


def _reward_grader_of(policy: str | None) -> str | None:
    """The reward grader of the run a policy directory came from (RUN/policy beside RUN/config.yaml)."""
    if not policy:
        return None
    config = Path(policy).expanduser() / ".." / "config.yaml"
    if not config.exists():
        return None
    try:
        import yaml

        rbr = (yaml.safe_load(config.read_text()) or {}).get("rbr") or {}
        return rbr.get("grader") if rbr.get("enabled", True) else None
    except Exception:  # noqa: BLE001 - best effort: an unreadable config only loses the warning
        return None


def _engine(args):
    if args.server:
        from ..models import resolve_model
        from ..rollout.vllm_server import VLLMEngine

        return VLLMEngine(args.server, resolve_model(args.tokenizer or "smollm2"), model_name=args.model_name), None
    if args.engine == "vllm":
        from ..rollout.vllm_server import VLLMEngine, VLLMServer

        print(f"starting a vLLM server for {args.policy}", file=sys.stderr, flush=True)
        server = VLLMServer(args.policy).start()
        return VLLMEngine(server.url, server.model), server
    from ..rollout.hf_engine import TransformersEngine

    return TransformersEngine(args.policy, batch_size=args.batch_size), None


def run(args) -> int:
    from ..cli import print_json
    from ..data import write_json, write_jsonl
    from ..grader.factory import build_grader
    from ..rules import load_rules
    from .evaluate import (evaluate_completions, generate_completions, independence, load_completions,
                           load_prompt_rows, load_xstest, render_markdown)

    rules = load_rules(args.rules)
    rules.require_evaluation("rbr-rlhf eval")
    if args.completions:
        if args.prompts or args.xstest:
            raise ValueError("--prompts/--xstest name prompts to generate for; with --completions the file holds them")
        rows = load_completions(args.completions, rules, args.limit)
    else:
        if not (args.prompts or args.xstest):
            raise ValueError("give the prompts to evaluate: --prompts FILE and/or --xstest xstest_prompts.csv")
        rows = []
        if args.prompts:
            rows += load_prompt_rows(args.prompts, rules, args.limit)
        if args.xstest:
            rows += load_xstest(args.xstest, args.limit, rules)
    if not rows:
        raise ValueError("no rows to evaluate (no prompt's category is one of the rule set's)")
    reward_grader = args.reward_grader or _reward_grader_of(args.policy)
    independence(args.judge, reward_grader)
    judge = build_grader(args.judge, rules)  # fails early (missing path, wrong rule set) before any generation
    if not args.completions:
        engine, server = _engine(args)
        try:
            rows = generate_completions(engine, rows, args.max_tokens, args.batch_size)
        finally:
            engine.close()
            if server is not None:
                server.stop()
    result = evaluate_completions(rows, judge, rules, judge_spec=args.judge, reward_grader=reward_grader,
                                  resamples=args.resamples, seed=args.seed, keep_records=True)
    records = result.pop("records")
    result["source"] = {"policy": args.policy, "server": args.server, "completions": args.completions,
                        "prompts": args.prompts, "xstest": args.xstest, "limit": args.limit,
                        "max_tokens": None if args.completions else args.max_tokens}
    table = render_markdown(result)
    if args.out:
        out = Path(args.out)
        write_json(out / "eval.json", result)
        (out / "eval.md").write_text(table + "\n", encoding="utf-8")
        write_jsonl(out / "completions.jsonl", records)
        result["out"] = str(out)
    print(table, flush=True)
    if args.json:
        print_json(result)
    return 0

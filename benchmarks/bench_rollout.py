"""Rollout throughput: the vLLM rollout server vs in-process transformers ``generate``.

Same model, prompts, batch and max tokens; both sample at temperature 1 with ``ignore_eos`` semantics
approximated by counting the tokens each actually generated. Prints generated tokens/s of each and the
ratio, measured in this one run.

    .venv/bin/python benchmarks/bench_rollout.py [--prompts 16] [--samples 1] [--max-tokens 64] [--compile] [--dtype float32]

``--samples N`` asks each engine for N completions per prompt (PPO's ``rollout.samples_per_prompt``);
``--compile`` starts vLLM without ``--enforce-eager`` (torch.compile: minutes more start-up, cached in
~/.cache/vllm afterwards); ``--dtype`` sets both engines' weights and compute (``bfloat16`` uses the
CPU's AVX512-BF16 units where it has them). Start-up is not part of either rate.

It also prints a ceiling measured in the same run: the time of the policy's Linear layers alone (the
weight matmuls, LM head included) for one decode step of the whole batch. Every engine does at least
that work per generated token of each sequence, so ceiling / transformers bounds the ratio an engine
with the same matmul kernels can reach on this machine and batch (a different dtype or quantised kernels
move the ceiling for both).
"""

import argparse
import time


def linear_ceiling(model, batch: int, repeats: int = 20) -> float:
    """Tokens/s if a decode step cost only its weight matmuls: one Linear call per layer for ``batch`` rows."""
    import torch

    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = [torch.randn(batch, w.shape[1], dtype=w.dtype, device=w.device) for w in weights]
    with torch.inference_mode():
        for w, x in zip(weights, inputs):  # warm-up
            torch.nn.functional.linear(x, w)
        t = time.perf_counter()
        for _ in range(repeats):
            for w, x in zip(weights, inputs):
                torch.nn.functional.linear(x, w)
        step = (time.perf_counter() - t) / repeats
    return batch / step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="vLLM with torch.compile instead of eager mode")
    ap.add_argument("--dtype", default="float32", help="both engines: float32 (the CPU recipe's) or bfloat16")
    args = ap.parse_args()

    from rbr_rlhf.models import resolve_model
    from rbr_rlhf.rollout.hf_engine import TransformersEngine
    from rbr_rlhf.rollout.vllm_server import VLLMEngine, VLLMServer

    topics = ["rain", "the ocean", "a city at night", "bread", "mountains", "a library", "trains", "autumn"]
    convs = [[{"role": "user", "content": f"Write a short paragraph about {topics[i % len(topics)]} (#{i})."}]
             for i in range(args.prompts)]

    def measure(engine):
        engine.generate(convs[:2], max_tokens=4, seed=0)  # warm-up
        best = 0.0
        for r in range(args.repeats):
            t = time.perf_counter()
            gens = engine.generate(convs, n=args.samples, temperature=1.0, max_tokens=args.max_tokens, seed=r)
            tokens = sum(len(g.token_ids) for g in gens)
            best = max(best, tokens / (time.perf_counter() - t))
        return best

    hf = TransformersEngine(args.model, dtype=args.dtype, batch_size=args.prompts * args.samples)
    hf_tps = measure(hf)
    ceiling = linear_ceiling(hf.model, args.prompts * args.samples)
    del hf
    with VLLMServer(args.model, max_model_len=1024, dtype=args.dtype, enforce_eager=not args.compile,
                    max_num_seqs=max(32, args.prompts * args.samples)) as server:
        vllm_tps = measure(VLLMEngine(server.url, resolve_model(args.model)))
    print(f"transformers generate: {hf_tps:.1f} tokens/s")
    print(f"vLLM rollout server:   {vllm_tps:.1f} tokens/s")
    print(f"ceiling (weight matmuls only, {args.prompts * args.samples} sequences a step): {ceiling:.1f} tokens/s, "
          f"an engine using the same matmul kernels stays below {ceiling / hf_tps:.2f}x transformers here")
    print(f"ratio vLLM / transformers: {vllm_tps / hf_tps:.2f}x  ({args.prompts} prompts x {args.samples} samples, "
          f"{args.max_tokens} max tokens, {args.dtype}, vLLM {'compiled' if args.compile else 'eager'})")


if __name__ == "__main__":
    main()

"""PPO steps on one GPU (or the CPU, for a smoke run): per-phase times, tokens/s, and the passes' and
training phase's achieved FLOP/s against a matrix product measured in the same run.

Our PPOTrainer (DeepSpeed ZeRO-2, LoRA r16 on policy and critic) with the transformers rollout engine
standing in for vLLM (too large to carry to the GPU check machine), a synthetic reward (no reward model
or grader: this measures the trainer), and randomly initialised models of the SmolLM2 / Llama family
(throughput needs no trained weights):

    python3 benchmarks/bench_ppo_gpu.py --arch smollm2-135m --steps 3            # GPU, bf16
    python3 benchmarks/bench_ppo_gpu.py --arch llama-1b --steps 2
    python3 benchmarks/bench_ppo_gpu.py --arch tiny --device cpu --steps 1 --prompts 2 --max-tokens 4   # smoke

The first step is a warm-up (allocator, kernels) and is left out of the figures when there are more.
The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
NCCL_NOTE = ("NCCL weight sync (trainer -> vLLM broadcast) is not exercised here: NCCL needs one device per rank, so "
             "the broadcast needs two GPUs or a cluster (tests/test_weight_sync.py::test_nccl_broadcast_into_vllm "
             "runs it where there are two). This run syncs through the in-process transformers engine.")


def parse_args(argv=None):
    from ppo_common import ARCHS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", choices=sorted(ARCHS), default="smollm2-135m", help="model shape (random init)")
    ap.add_argument("--model", help="an existing HF model directory instead of a random --arch model")
    ap.add_argument("--tokenizer", help="SmolLM2 tokenizer directory (default: .gpu/smollm2-tokenizer or the built-in model's)")
    ap.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when available")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=32, help="prompts per step")
    ap.add_argument("--samples", type=int, default=2, help="completions per prompt")
    ap.add_argument("--max-tokens", type=int, default=128, help="new tokens per completion")
    ap.add_argument("--minibatch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--zero-stage", type=int, choices=[2, 3], default=2)
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default=None, help="default: bfloat16 on GPU, float32 on CPU")
    ap.add_argument("--json-out", help="also write the JSON result here")
    args = ap.parse_args(argv)
    if args.prompts * args.samples % args.minibatch:
        ap.error(f"--prompts x --samples ({args.prompts * args.samples}) must be a multiple of --minibatch ({args.minibatch})")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    from ppo_common import (RecordingEngine, SyntheticReward, build_model_dir, cleanup, fmt_rate, make_trainer,
                            minibatch_shape, step_flops, synthetic_prompts, tokenizer_dir, train_config)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    dtype = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    tok_dir = tokenizer_dir(args.tokenizer)
    own_dir = args.model is None
    model_dir = args.model or build_model_dir(args.arch, tok_dir)
    print(f"[bench] {args.model or args.arch + ' (random init)'} on {device}"
          f"{' (' + torch.cuda.get_device_name() + ')' if device == 'cuda' else ''}, {dtype}, ZeRO-{args.zero_stage}, "
          f"{args.prompts}x{args.samples} completions of <= {args.max_tokens} tokens, minibatch {args.minibatch}, "
          f"{args.epochs} epoch(s)", flush=True)
    print(f"[bench] {NCCL_NOTE}", flush=True)

    from transformers import AutoTokenizer

    from rbr_rlhf.ppo.flops import matmul_reference
    from rbr_rlhf.rollout.hf_engine import TransformersEngine

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    engine = RecordingEngine(TransformersEngine(model_dir, dtype=dtype, device=device, batch_size=args.prompts * args.samples))
    run_dir = tempfile.mkdtemp(prefix="rbr-bench-run-")
    cfg = train_config(model_dir, run_dir, prompts_per_step=args.prompts, samples=args.samples, max_tokens=args.max_tokens,
                       minibatch=args.minibatch, epochs=args.epochs, bf16=dtype == "bfloat16", zero_stage=args.zero_stage)
    trainer = make_trainer(cfg, engine, SyntheticReward(), synthetic_prompts(max(64, args.prompts * 4)), tokenizer)

    steps = []
    for s in range(args.steps):
        m = trainer.train_step()
        f = step_flops(trainer, engine.last)
        t = {k[5:]: v for k, v in m.items() if k.startswith("time/")}
        steps.append((t, f))
        print(f"[bench] step {s + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in t.items())
              + f"; {f['response_tokens']} new tokens, {f['tokens']} tokens trained", flush=True)
    measured = steps[1:] if len(steps) > 1 else steps

    def total(key, src=0):
        return sum(x[src][key] for x in measured)

    gen_s, train_s, pass_s = total("rollout"), total("training"), total("ref_critic_passes")
    new_tokens, tokens = total("response_tokens", 1), total("tokens", 1)
    train_flops, pass_flops = total("training", 1), total("passes", 1)
    m_, k_, n_, _ = minibatch_shape(trainer, engine.last)
    torch_dtype = getattr(torch, dtype)
    ref_similar = matmul_reference(m_, k_, n_, dtype=torch_dtype, device=device)
    ref_big = matmul_reference(8192, 8192, 8192, dtype=torch.bfloat16, device=device) if device == "cuda" else None
    res = {
        "arch": args.model or args.arch, "device": device, "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "dtype": dtype, "zero_stage": args.zero_stage, "steps_measured": len(measured),
        "policy_params": steps[-1][1]["policy_params"], "completions_per_step": args.prompts * args.samples,
        "phase_seconds_per_step": {k: sum(x[0][k] for x in measured) / len(measured) for k in measured[0][0]},
        "generation_tokens_per_s": new_tokens / gen_s if gen_s else None,
        "training_tokens_per_s": tokens * args.epochs / train_s if train_s else None,
        "training_flops_per_s": train_flops / train_s if train_s else None,
        "passes_flops_per_s": pass_flops / pass_s if pass_s else None,
        "matmul_similar_shape": {"m": m_, "k": k_, "n": n_, "dtype": dtype, "flops_per_s": ref_similar},
        "matmul_bf16_8192": ref_big,
        "nccl_weight_sync": "not run: needs two GPUs (one device per NCCL rank)",
    }
    res["training_vs_matmul"] = res["training_flops_per_s"] / ref_similar if res["training_flops_per_s"] else None
    if ref_big:
        res["training_vs_bf16_peak_matmul"] = res["training_flops_per_s"] / ref_big
    print("[bench] per step: " + ", ".join(f"{k} {v:.2f} s" for k, v in res["phase_seconds_per_step"].items()))
    print(f"[bench] generation: {res['generation_tokens_per_s']:.0f} new tokens/s (transformers engine)")
    print(f"[bench] training: {res['training_tokens_per_s']:.0f} tokens/s, {fmt_rate(res['training_flops_per_s'])} "
          f"(LoRA: 4 x params x tokens per fwd+bwd, policy and critic)")
    print(f"[bench] ref/old/value passes: {fmt_rate(res['passes_flops_per_s'])}")
    print(f"[bench] matmul {m_}x{k_} @ {k_}x{n_} {dtype}: {fmt_rate(ref_similar)}; training phase at "
          f"{100 * res['training_vs_matmul']:.1f}% of it")
    if ref_big:
        print(f"[bench] matmul 8192^3 bf16: {fmt_rate(ref_big)}; training phase at {100 * res['training_vs_bf16_peak_matmul']:.1f}% of it")
    print(json.dumps(res))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(res, indent=1))
    cleanup(run_dir)
    if own_dir:
        cleanup(model_dir)
    return res


if __name__ == "__main__":
    main()

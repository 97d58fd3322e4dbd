"""``rbr-rlhf sft``: supervised fine-tuning of the policy (the warm start of ``rbr-rlhf experiment``)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from .train import SFTConfig

    d = SFTConfig()
    s = sub.add_parser("sft", help="fine-tune the policy (TRL SFTTrainer, LoRA merged) into a policy directory")
    s.add_argument("--data", action="append", required=True,
                   help="SFT rows (messages ending with the assistant's answer), e.g. rbr build's OUT/sft.jsonl; repeat to mix files")
    s.add_argument("--out", required=True, help="output Hugging Face policy directory (a recipe's policy.model)")
    s.add_argument("--base", default=d.base, help="model to fine-tune: smollm2, a directory or a hub name")
    s.add_argument("--limit", type=int, help="at most N rows per file")
    s.add_argument("--max-length", type=int, default=d.max_length)
    s.add_argument("--max-prompt-tokens", type=int, help="drop rows whose prompt is longer (default: keep all)")
    s.add_argument("--epochs", type=float, default=d.epochs)
    s.add_argument("--max-steps", type=int, default=d.max_steps, help="optimizer steps (-1: --epochs decides)")
    s.add_argument("--lr", type=float, default=d.lr)
    s.add_argument("--batch-size", type=int, default=d.batch_size)
    s.add_argument("--lora-r", type=int, default=d.lora_r, help="LoRA rank (0: full fine-tuning)")
    s.add_argument("--target-modules", default=",".join(d.target_modules),
                   help="comma-separated modules that get LoRA adapters (e.g. add gate_proj,up_proj,down_proj for the MLP)")
    s.add_argument("--seed", type=int, default=d.seed)
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=run_sft)


def run_sft(args) -> int:
    from ..cli import print_json
    from .train import SFTConfig, train_sft

    cfg = SFTConfig(data=list(args.data), out=args.out, base=args.base, limit=args.limit, max_length=args.max_length,
                    max_prompt_tokens=args.max_prompt_tokens, epochs=args.epochs, max_steps=args.max_steps, lr=args.lr, batch_size=args.batch_size,
                    lora_r=args.lora_r, target_modules=[m.strip() for m in args.target_modules.split(",") if m.strip()],
                    seed=args.seed)
    info = train_sft(cfg)
    print(f"policy -> {args.out}  ({info['examples']} rows, {info['steps']} steps, {info['train_seconds']} s, "
          f"loss {info['first_loss']} -> {info['last_loss']})")
    if args.json:
        print_json({"out": args.out, **info})
    return 0

"""``rbr-rlhf rm train`` and ``rbr-rlhf rm eval``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ..cli import group

    rm = group(sub, "rm", help="train and evaluate the helpful reward model")
    train = rm.add_parser("train", help="train a Bradley-Terry reward model (TRL RewardTrainer)")
    train.add_argument("--data", required=True, help="preference pairs: chosen/rejected (HH-RLHF dialogues, "
                       "or prompt + chosen/rejected completions); JSONL(.gz), JSON, Parquet or CSV")
    train.add_argument("--out", required=True, help="output Hugging Face sequence-classification directory")
    train.add_argument("--base", default="minilm", help="base model: minilm (default), smollm2, a directory or hub name")
    train.add_argument("--eval-fraction", type=float, default=0.1, help="held-out share of pairs (by hash)")
    train.add_argument("--limit", type=int, help="use only the first N pairs")
    train.add_argument("--max-length", type=int, default=256)
    train.add_argument("--epochs", type=float, default=1.0)
    train.add_argument("--lr", type=float, default=5e-5)
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--lora", action="store_true", help="train LoRA adapters (merged before saving)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--json", action="store_true")
    # Labelling schemes from data-adaptive safety rules (--adaptive-rules K, --all-rules, --random-rules K).
    from ..adaptive.cli import add_train_rm_arguments

    add_train_rm_arguments(train)
    train.set_defaults(handler=run_train)

    ev = rm.add_parser("eval", help="pairwise accuracy of a reward model (ties count as wrong)")
    ev.add_argument("--rm", required=True, help="reward-model directory")
    ev.add_argument("--pairs", required=True, help="chosen/rejected file")
    ev.add_argument("--limit", type=int)
    ev.add_argument("--max-length", type=int, default=512)
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(handler=run_eval)


def run_train(args) -> int:
    from ..cli import print_json
    from ..adaptive.cli import relabel_for_train_rm
    from .text import load_pairs
    from .train import RMTrainConfig, split_pairs, train_reward_model

    pairs = load_pairs(args.data, args.limit)
    pairs, label_info = relabel_for_train_rm(args, pairs)  # unchanged for the original labels
    train, held = split_pairs(pairs, args.eval_fraction, args.seed)
    cfg = RMTrainConfig(base=args.base, max_length=args.max_length, epochs=args.epochs, lr=args.lr,
                        batch_size=args.batch_size, lora=args.lora, seed=args.seed)
    info = train_reward_model(train, args.out, cfg, held, {"data": str(args.data), **label_info})
    acc = info.get("eval_accuracy")
    print(f"reward model -> {args.out}  ({info['train_pairs']} pairs, {info['train_seconds']} s)")
    if acc is not None:
        print(f"held-out pairwise accuracy: {100 * acc:.1f}% on {info['eval_pairs']} pairs (ties count as wrong)")
    if args.json:
        print_json({"out": args.out, **info})
    return 0


def run_eval(args) -> int:
    from ..cli import print_json
    from .model import RewardModel
    from .text import load_pairs
    from .train import pairwise_accuracy

    pairs = load_pairs(args.pairs, args.limit)
    rm = RewardModel(args.rm, max_length=args.max_length)
    c = rm.score_texts([p[0] for p in pairs])
    r = rm.score_texts([p[1] for p in pairs])
    acc = pairwise_accuracy(c, r)
    ties = int((c == r).sum())
    print(f"{args.rm}: pairwise accuracy {100 * acc:.1f}% on {len(pairs)} pairs ({ties} ties, counted wrong)")
    if args.json:
        print_json({"rm": args.rm, "pairs": len(pairs), "accuracy": acc, "ties": ties,
                    "mean_margin": float((c - r).mean())})
    return 0

"""``rbr-rlhf sft``: a warm start for PPO, with TRL's ``SFTTrainer`` and LoRA, merged into a plain Hugging Face
policy directory that a recipe names as ``policy.model``.

Why: PPO can only reinforce what the policy samples, and a small model rarely writes a well-formed ideal
refusal on its own. So the start is fine-tuned on ``rbr build``'s ideal completions (``sft.jsonl`` in its
out directory) mixed with helpful answers (``experiment/helpful.py``).

Rows are conversations (``messages``, the last one the assistant's answer); they are turned into TRL's
prompt-completion form so that the loss is on the answer only (TRL's ``completion_only_loss``).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from ..data import read_rows, write_json


@dataclass
class SFTConfig:
    data: list = field(default_factory=list)   # SFT files: rows with ``messages`` (or ``conversation`` + ``completion``)
    out: str = "runs/sft"             # the merged policy directory written here
    base: str = "smollm2"             # the model fine-tuned: alias, directory or hub name
    limit: int | None = None          # at most this many rows per file
    max_length: int = 512             # tokens per example (prompt and answer; longer ones are truncated)
    max_prompt_tokens: int | None = None  # drop rows whose prompt is longer (as PPO's data.max_train_prompt_tokens)
    epochs: float = 2.0               # passes over the mixed rows
    max_steps: int = -1               # stop after this many optimizer steps (-1: epochs decide)
    lr: float = 2e-4                  # learning rate (LoRA)
    batch_size: int = 8               # rows per optimizer step
    lora_r: int = 16                  # LoRA rank (0: full fine-tuning)
    lora_alpha: int = 32              # LoRA scaling alpha
    target_modules: list = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    seed: int = 0                     # shuffling and initialisation


def sft_example(row: dict, source: str = "") -> dict:
    """A row as TRL's conversational prompt-completion pair."""
    if "messages" in row:
        messages = list(row["messages"])
    elif "conversation" in row and "completion" in row:
        completion = row["completion"]
        if isinstance(completion, list):
            completion = completion[-1]["content"]
        messages = list(row["conversation"]) + [{"role": "assistant", "content": completion}]
    else:
        raise ValueError(f"{source}: an SFT row needs 'messages' (or 'conversation' and 'completion')")
    if len(messages) < 2 or messages[-1].get("role") != "assistant" or not str(messages[-1].get("content", "")).strip():
        raise ValueError(f"{source}: an SFT row must end with a non-empty assistant message")
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    return {"prompt": clean[:-1], "completion": clean[-1:]}


def load_sft_rows(paths: Sequence[str], limit: int | None = None) -> tuple[list[dict], dict[str, int]]:
    """The examples of every file, and how many came from each."""
    examples, counts = [], {}
    for path in paths:
        rows = read_rows(path)[:limit]
        for i, r in enumerate(rows, 1):
            examples.append(sft_example(r, f"{path}: row {i}"))
        counts[str(path)] = len(rows)
    if not examples:
        raise ValueError(f"no SFT rows in {list(paths)}")
    return examples, counts


def train_sft(cfg: SFTConfig) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig as TRLConfig, SFTTrainer

    from ..models import resolve_model

    examples, counts = load_sft_rows(cfg.data, cfg.limit)
    random.Random(cfg.seed).shuffle(examples)
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    base = resolve_model(cfg.base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dropped = 0
    if cfg.max_prompt_tokens:
        # Training cost is per token, prompt tokens included (gold prompts are long multi-turn chats): the
        # experiment's start took 28 min over 233 rows. Its PPO arms train on prompts of at most 160 tokens,
        # so the start needs no longer ones.
        keep = [e for e in examples if len(tokenizer.apply_chat_template(e["prompt"], add_generation_prompt=True,
                                                                        tokenize=True, return_dict=True)["input_ids"]) <= cfg.max_prompt_tokens]
        dropped, examples = len(examples) - len(keep), keep
        if not examples:
            raise ValueError(f"no SFT row has a prompt of at most {cfg.max_prompt_tokens} tokens (sft max_prompt_tokens)")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_config = None
    if cfg.lora_r:
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="CAUSAL_LM", r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                 target_modules=list(cfg.target_modules))
    args = TRLConfig(
        output_dir=str(out / "trainer"), per_device_train_batch_size=cfg.batch_size, num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps, learning_rate=cfg.lr, max_length=cfg.max_length, seed=cfg.seed,
        completion_only_loss=True, packing=False, logging_steps=5, save_strategy="no", report_to=["tensorboard"],
        use_cpu=not torch.cuda.is_available(),
        # As in rm/train.py: TRL defaults to bf16, which on a CPU without native bf16 runs a reference GEMM.
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        dataloader_num_workers=0, dataset_num_proc=None,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=tokenizer,
                         peft_config=peft_config)
    start = time.time()
    result = trainer.train()
    seconds = time.time() - start
    model = trainer.model
    if peft_config is not None:
        model = model.merge_and_unload()  # a plain directory: vLLM, DeepSpeed and the rollout engines load it
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    info = {"config": asdict(cfg), "base": base, "examples": len(examples), "dropped_long_prompts": dropped, "files": counts,
            "steps": trainer.state.global_step, "train_seconds": round(seconds, 1),
            "train_loss": float(result.training_loss), "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None}
    write_json(out / "sft_info.json", info)
    return info


def sft_done(out: str | Path) -> bool:
    """Has ``train_sft`` finished writing ``out``? (its info file is written last)"""
    return (Path(out) / "sft_info.json").exists() and (Path(out) / "config.json").exists()


def read_info(out: str | Path) -> dict:
    return json.loads((Path(out) / "sft_info.json").read_text())

"""Bradley-Terry reward-model training with TRL's RewardTrainer.

Any base works: an encoder (MiniLM, the CPU default) or a causal LM, both through
``AutoModelForSequenceClassification`` with one output; LoRA (peft) is optional and merged before saving.
We tokenize ourselves, truncating from the left: TRL drops pairs longer than ``max_length``, and in
preference data the chosen and rejected dialogues differ only at their end.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data import write_json
from ..seeding import stable_fraction

log = logging.getLogger(__name__)


@dataclass
class RMTrainConfig:
    base: str = "minilm"
    max_length: int = 256
    epochs: float = 1.0
    lr: float = 5e-5
    batch_size: int = 16
    lora: bool = False
    lora_r: int = 16
    seed: int = 0
    center_rewards_coefficient: float = 0.01


def split_pairs(pairs: Sequence[tuple[str, str]], eval_fraction: float, seed: int = 0):
    """Held-out pairs chosen by a seeded hash of the chosen text (stable across runs and machines)."""
    train, held = [], []
    for p in pairs:
        h = stable_fraction(seed, p[0])
        (held if h < eval_fraction else train).append(p)
    return train, held


def pairwise_accuracy(chosen_scores: np.ndarray, rejected_scores: np.ndarray) -> float:
    """Share of pairs where chosen scores strictly above rejected: ties count as wrong (RewardBench)."""
    if len(chosen_scores) == 0:
        return float("nan")
    return float(np.mean(np.asarray(chosen_scores) > np.asarray(rejected_scores)))


def train_reward_model(pairs: Sequence[tuple[str, str]], out_dir: str | Path, cfg: RMTrainConfig,
                       eval_pairs: Sequence[tuple[str, str]] = (), extra_info: dict | None = None) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from ..models import resolve_model
    from .model import RewardModel

    if not pairs:
        raise ValueError("no training pairs")
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    base = resolve_model(cfg.base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.truncation_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id

    def encode(texts):
        return tokenizer(list(texts), truncation=True, max_length=cfg.max_length)["input_ids"]

    dataset = Dataset.from_dict({"chosen_ids": encode(p[0] for p in pairs), "rejected_ids": encode(p[1] for p in pairs)})
    peft_config = None
    if cfg.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="SEQ_CLS", r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, lora_dropout=0.0)
    args = RewardConfig(
        output_dir=str(out_dir / "trainer"), per_device_train_batch_size=cfg.batch_size,
        num_train_epochs=cfg.epochs, learning_rate=cfg.lr, max_length=None, seed=cfg.seed,
        logging_steps=10, save_strategy="no", report_to=["tensorboard"],  # TensorBoard logs under output_dir
        center_rewards_coefficient=cfg.center_rewards_coefficient, use_cpu=not torch.cuda.is_available(),
        # TRL's configs default to bf16=True. On a CPU without native bf16 (AVX2, e.g. AMD EPYC) autocast
        # then runs every matmul in ATen's reference GEMM: 116 s a step instead of about 2 (measured).
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        dataloader_num_workers=0, disable_tqdm=False,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                            peft_config=peft_config)
    start = time.time()
    trainer.train()
    train_seconds = time.time() - start
    model = trainer.model
    if cfg.lora:
        model = model.merge_and_unload()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)

    info = {"config": asdict(cfg), "train_pairs": len(pairs), "train_seconds": round(train_seconds, 1),
            **(extra_info or {})}
    if eval_pairs:
        rm = RewardModel(str(out_dir), max_length=cfg.max_length)
        c = rm.score_texts([p[0] for p in eval_pairs])
        r = rm.score_texts([p[1] for p in eval_pairs])
        info.update(eval_pairs=len(eval_pairs), eval_accuracy=pairwise_accuracy(c, r))
    write_json(out_dir / "rm_info.json", info)
    return info

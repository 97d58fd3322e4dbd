"""Scoring with a trained reward model (any Hugging Face sequence-classification directory)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .text import render_dialogue


class RewardModel:
    def __init__(self, path: str, batch_size: int = 16, max_length: int = 512, device: str = "cpu"):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ..models import resolve_model

        self.name = str(path)
        resolved = resolve_model(path)
        self.tokenizer = AutoTokenizer.from_pretrained(resolved)
        # The differing part of a dialogue is its end: truncate from the left.
        self.tokenizer.truncation_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # use_safetensors: never unpickle weights from a directory we did not write.
        self.model = AutoModelForSequenceClassification.from_pretrained(resolved, use_safetensors=True,
                                                                        dtype=torch.float32).to(device).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size = batch_size
        self.max_length = min(max_length, getattr(self.tokenizer, "model_max_length", max_length) or max_length)
        self.device = device

    def score_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = np.zeros(len(texts))
        with torch.inference_mode():
            for s in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(list(texts[s:s + self.batch_size]), padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt").to(self.device)
                out[s:s + len(batch["input_ids"])] = self.model(**batch).logits[:, 0].float().cpu().numpy()
        return out

    def reward(self, conversations: Sequence, completions: Sequence[str]) -> np.ndarray:
        """R_rm of each (conversation, completion)."""
        return self.score_texts([render_dialogue(c, x) for c, x in zip(conversations, completions)])

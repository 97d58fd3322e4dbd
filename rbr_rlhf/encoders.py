"""Frozen sentence embeddings (mean pooling over a Hugging Face encoder; MiniLM by default)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


class MeanPoolEncoder:
    def __init__(self, model: str = "minilm", max_length: int = 256, batch_size: int = 32, device: str = "cpu"):
        import torch
        from transformers import AutoModel, AutoTokenizer

        from .models import resolve_model

        path = resolve_model(model)
        self.name = model
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).to(device).eval()
        self.max_length, self.batch_size, self.device = max_length, batch_size, device

    def encode(self, texts: Sequence[str], truncation_side: str = "right") -> np.ndarray:
        import torch

        self.tokenizer.truncation_side = truncation_side
        out = []
        with torch.inference_mode():
            for s in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(list(texts[s:s + self.batch_size]), padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.hidden_size))

"""Frozen sentence embeddings (mean pooling over a Hugging Face encoder; MiniLM by default)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def length_batches(lengths: Sequence[int], max_rows: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices in batches of similar length (sorted, shortest first): at most ``max_rows`` rows and, when
    given, ``max_tokens`` padded tokens (rows x the batch's longest) each. A batch is padded to its longest
    text, so sorting wastes little on padding."""
    batches: list[list[int]] = []
    batch: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if batch and (len(batch) == max_rows or (max_tokens and (len(batch) + 1) * lengths[i] > max_tokens)):
            batches.append(batch)
            batch = []
        batch.append(i)
    return batches + ([batch] if batch else [])


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
        # Each distinct text is encoded once, and batches are cut from the texts sorted by length: a batch
        # is padded to its longest text, and graders encode short sentences next to long answers (and the
        # same refusal sentence many times). Mean pooling masks the padding, so the vectors are those of
        # one text at a time (up to float rounding, 2e-7): the reward grader's features of 600 training rows took
        # 103 s -> 50 s on 2 cores (2026-12-02).
        unique = list(dict.fromkeys(texts))
        if not unique:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        ids = self.tokenizer(unique, truncation=True, max_length=self.max_length, add_special_tokens=True)["input_ids"]
        vectors = np.zeros((len(unique), self.model.config.hidden_size), dtype=np.float32)
        with torch.inference_mode():
            for rows in length_batches([len(x) for x in ids], self.batch_size):
                batch = self.tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt").to(self.device)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                vectors[rows] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        index = {t: i for i, t in enumerate(unique)}
        return vectors[[index[t] for t in texts]]

"""Packing rollouts into tensors, and the forward passes that read log-probabilities and values.

A sample is prompt tokens + response tokens. Samples are right-padded into one [B, L] tensor; for the
j-th response token of sample i, the logits (and the critic's value) that predict it sit at position
``len(prompt_i) - 1 + j``. ``resp_index`` holds those positions so one gather reads every response
token's log-probability at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .core import entropy_from_logits, logprobs_from_logits


@dataclass
class PackedBatch:
    input_ids: torch.Tensor      # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    resp_index: torch.Tensor     # [B, R] positions whose logits predict response tokens
    resp_tokens: torch.Tensor    # [B, R]
    resp_mask: torch.Tensor      # [B, R] float, 1 on real response tokens

    def select(self, idx) -> "PackedBatch":
        return PackedBatch(*(t[idx] for t in (self.input_ids, self.attention_mask, self.resp_index,
                                              self.resp_tokens, self.resp_mask)))


def pack(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int) -> PackedBatch:
    B = len(prompt_ids)
    L = max(len(p) + len(r) for p, r in zip(prompt_ids, response_ids))
    R = max(max(len(r) for r in response_ids), 1)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attention = torch.zeros((B, L), dtype=torch.long)
    resp_index = torch.zeros((B, R), dtype=torch.long)
    resp_tokens = torch.full((B, R), pad_id, dtype=torch.long)
    resp_mask = torch.zeros((B, R))
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        seq = list(p) + list(r)
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention[i, : len(seq)] = 1
        if r:
            resp_index[i, : len(r)] = torch.arange(len(p) - 1, len(p) - 1 + len(r))
            resp_tokens[i, : len(r)] = torch.tensor(r)
            resp_mask[i, : len(r)] = 1.0
    return PackedBatch(input_ids, attention, resp_index, resp_tokens, resp_mask)


def policy_forward(model, batch: PackedBatch, with_entropy: bool = False):
    """log pi(response tokens) [B, R] (and per-token entropy) from one forward pass."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    idx = batch.resp_index.unsqueeze(-1).expand(-1, -1, logits.shape[-1])
    resp_logits = torch.gather(logits, 1, idx)
    logprobs = logprobs_from_logits(resp_logits, batch.resp_tokens) * batch.resp_mask
    if with_entropy:
        return logprobs, entropy_from_logits(resp_logits) * batch.resp_mask
    return logprobs


def critic_forward(critic, batch: PackedBatch) -> torch.Tensor:
    values = critic(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return torch.gather(values, 1, batch.resp_index) * batch.resp_mask

"""Packing rollouts into tensors, and the forward passes that read log-probabilities and values.

A sample is prompt tokens + response tokens. Samples are right-padded into one [B, L] tensor; for the
j-th response token of sample i, the logits (and the critic's value) that predict it sit at position
``len(prompt_i) - 1 + j``. ``resp_index`` holds those positions so one gather reads every response
token's log-probability at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch



@dataclass
class PackedBatch:
    input_ids: torch.Tensor      # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    resp_index: torch.Tensor     # [B, R] positions whose logits predict response tokens
    resp_tokens: torch.Tensor    # [B, R]
    resp_mask: torch.Tensor      # [B, R] float, 1 on real response tokens

    def to(self, device) -> "PackedBatch":
        return PackedBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.resp_index,
                                                    self.resp_tokens, self.resp_mask)))

    def select(self, idx) -> "PackedBatch":
        """Rows ``idx``, with the input columns past the longest selected sequence cut off (right padding
        only: no position any selected row uses is dropped, so the result is exact and the model computes
        no all-padding columns). The response columns keep their width: callers line them up with
        whole-batch tensors."""
        ids, attn = self.input_ids[idx], self.attention_mask[idx]
        width = max(int(attn.sum(1).max()), 1) if attn.numel() else ids.shape[1]
        return PackedBatch(ids[:, :width], attn[:, :width], self.resp_index[idx], self.resp_tokens[idx], self.resp_mask[idx])


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


def minibatch_indices(batch: PackedBatch, size: int, mode: str, gen: torch.Generator) -> list[torch.Tensor]:
    """One PPO epoch's minibatches (row indices). ``random``: a fresh permutation each epoch.
    ``by_length``: rows sorted by length are cut into minibatches, which are then shuffled. Each minibatch
    is cut to its longest sequence (``PackedBatch.select``), so grouping by length computes fewer padding
    columns (on CPU the update is most of a step), at the cost of the same grouping in every epoch."""
    n = batch.input_ids.shape[0]
    if mode == "by_length":
        order = torch.argsort(batch.attention_mask.sum(1), stable=True)
        groups = [order[s:s + size] for s in range(0, n, size)]
        return [groups[i] for i in torch.randperm(len(groups), generator=gen).tolist()]
    order = torch.randperm(n, generator=gen)
    return [order[s:s + size] for s in range(0, n, size)]


def chunked_forward(fn, batch: PackedBatch, size: int) -> torch.Tensor:
    """``fn`` (a no-grad forward pass giving one row per sample) over chunks of rows of similar length,
    each cut to its longest sequence. Rows are independent, so this equals one pass over the batch."""
    n = batch.input_ids.shape[0]
    order = torch.argsort(batch.attention_mask.sum(1), stable=True)
    out = torch.cat([fn(batch.select(order[s:s + size])) for s in range(0, n, size)])
    return out[torch.argsort(order)]


def policy_forward(model, batch: PackedBatch, with_entropy: bool = False):
    """log pi(response tokens) [B, R] (and per-token entropy) from one forward pass.

    Only the positions from the earliest response token on get logits (``logits_to_keep``): the
    vocabulary projection and log-softmax of prompt positions, whose logits nobody reads, are skipped
    (SmolLM2's vocabulary projection is a fifth of its forward FLOPs, and prompts are most positions)."""
    first = int(batch.resp_index[:, 0].min()) if batch.resp_index.numel() else 0
    keep = batch.input_ids.shape[1] - first
    try:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=keep).logits
    except TypeError:  # a model without logits_to_keep: every position
        logits, first = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits, 0
    pos = (batch.resp_index - first).clamp(min=0)  # padding entries (index 0) are masked below
    idx = pos.unsqueeze(-1).expand(-1, -1, logits.shape[-1])
    resp_logits = torch.gather(logits, 1, idx)
    logp = torch.log_softmax(resp_logits.float(), dim=-1)
    logprobs = torch.gather(logp, 2, batch.resp_tokens.unsqueeze(-1)).squeeze(-1) * batch.resp_mask
    if with_entropy:
        return logprobs, -(logp.exp() * logp).sum(-1) * batch.resp_mask
    return logprobs


def critic_forward(critic, batch: PackedBatch) -> torch.Tensor:
    values = critic(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return torch.gather(values, 1, batch.resp_index) * batch.resp_mask

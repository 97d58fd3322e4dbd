"""Packing rollouts into tensors, and the forward passes that read log-probabilities and values.

The tensors hold **rows** and **samples**. A sample is one response to one prompt; a row is what the
model reads in one sequence of a forward pass:

* ``pack``: one sample a row, prompt tokens + response tokens, right-padded into [N, L]. For the j-th
  response token of sample i, the logits (and the critic's value) that predict it sit at position
  ``len(prompt_i) - 1 + j``.
* ``pack_shared``: one *prompt* a row, with all k of its samples after it,
  ``prompt | response_1 | ... | response_k``, under a tree-shaped attention mask (each response sees the
  prompt and itself, never its siblings; built from the row's segment ids for just the rows of one
  forward pass, ``PackedBatch.model_inputs``) and position ids that restart every response at the
  prompt's end. So the prompt is computed once instead of k times: with RLOO's 4 samples of ~94-token gold
  prompts and 48-token answers that is about half the tokens (``benchmarks/bench_shared_prompt.py``).
  Mathematically each sample sees exactly what it sees in its own row, so log-probabilities, values and
  gradients are the same (``tests/test_ppo_speed.py``). This needs an attention implementation that
  honours a 4D mask (sdpa or eager, the transformers default; not flash-attention-2).

``resp_index`` [S, R] holds, for every sample, the positions in its row whose logits predict its response
tokens, and ``sample_row`` [S] which row that is, so one gather reads every response token's
log-probability at once.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass
class PackedBatch:
    input_ids: torch.Tensor       # [N, L] rows
    attention_mask: torch.Tensor  # [N, L] 1 on real tokens
    resp_index: torch.Tensor      # [S, R] positions, in the sample's row, of the logits predicting its response tokens
    resp_tokens: torch.Tensor     # [S, R]
    resp_mask: torch.Tensor       # [S, R] float, 1 on real response tokens
    sample_row: torch.Tensor      # [S] the row holding each sample
    segments: torch.Tensor | None = None      # [N, L] shared rows: 0 prompt, j the j-th response, -1 padding
    position_ids: torch.Tensor | None = None  # [N, L] shared rows: each response continues at its prompt's end

    @property
    def lengths(self) -> torch.Tensor:
        """Real (non-padding) tokens of each row."""
        return self.attention_mask.sum(1)

    def to(self, device) -> "PackedBatch":
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if getattr(self, f.name) is not None})

    def row_samples(self) -> list[torch.Tensor]:
        """The samples of each row, in row order."""
        return [torch.nonzero(self.sample_row == r).flatten() for r in range(self.input_ids.shape[0])]

    def select(self, idx) -> "PackedBatch":
        """Samples ``idx`` (in that order) and the rows holding them, with the columns past the longest of
        those rows cut off (right padding only: no position any selected row uses is dropped, so the result
        is exact and the model computes no all-padding columns). The response columns keep their width:
        callers line them up with whole-batch tensors."""
        idx = torch.as_tensor(idx, device=self.sample_row.device)
        rows, sample_row = torch.unique(self.sample_row[idx], return_inverse=True)
        width = max(int(self.lengths[rows].max()), 1) if rows.numel() else self.input_ids.shape[1]

        def cut(t):
            return None if t is None else t[rows, :width]

        return PackedBatch(cut(self.input_ids), cut(self.attention_mask), self.resp_index[idx], self.resp_tokens[idx],
                           self.resp_mask[idx], sample_row, cut(self.segments), cut(self.position_ids))

    def model_inputs(self) -> dict:
        """Keyword arguments of the model's forward pass. Shared rows get their tree mask [N, 1, L, L] (True:
        may attend), built here for just these rows: a position sees the earlier positions of the prompt
        and of its own segment."""
        if self.segments is None:
            return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        L = self.segments.shape[1]
        causal = torch.ones(L, L, dtype=torch.bool, device=self.segments.device).tril()
        q, k = self.segments.unsqueeze(2), self.segments.unsqueeze(1)
        # Padding (-1) sees earlier padding and the prompt: never an empty row, which would make softmax NaN.
        tree = causal & ((k == 0) | (k == q))
        return {"input_ids": self.input_ids, "attention_mask": tree.unsqueeze(1), "position_ids": self.position_ids}


def _response_tensors(response_ids: list[list[int]], pad_id: int):
    """[S, R] response tokens, their mask, and a zero ``resp_index`` for the packer to fill (its positions
    depend on the row layout)."""
    S, R = len(response_ids), max(max((len(r) for r in response_ids), default=1), 1)
    resp_tokens = torch.full((S, R), pad_id, dtype=torch.long)
    resp_mask = torch.zeros((S, R))
    for i, r in enumerate(response_ids):
        if r:
            resp_tokens[i, : len(r)] = torch.tensor(r)
            resp_mask[i, : len(r)] = 1.0
    return resp_tokens, resp_mask, torch.zeros((S, R), dtype=torch.long)


def pack(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int) -> PackedBatch:
    """One sample a row."""
    B = len(prompt_ids)
    L = max(len(p) + len(r) for p, r in zip(prompt_ids, response_ids))
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attention = torch.zeros((B, L), dtype=torch.long)
    resp_tokens, resp_mask, resp_index = _response_tensors(response_ids, pad_id)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        seq = list(p) + list(r)
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention[i, : len(seq)] = 1
        if r:
            resp_index[i, : len(r)] = torch.arange(len(p) - 1, len(p) - 1 + len(r))
    return PackedBatch(input_ids, attention, resp_index, resp_tokens, resp_mask, torch.arange(B))


def pack_shared(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int, group_size: int) -> PackedBatch:
    """One prompt a row: samples ``g*k .. g*k+k-1`` (k = ``group_size``) must share their prompt, and
    become row g, ``prompt | response_1 | ... | response_k``, under a tree mask (see the module docstring)."""
    S, k = len(prompt_ids), group_size
    if k < 1 or S % k:
        raise ValueError(f"{S} samples do not split into groups of {k} samples per prompt")
    N = S // k
    for g in range(N):
        if any(list(prompt_ids[g * k + j]) != list(prompt_ids[g * k]) for j in range(1, k)):
            raise ValueError(f"samples {g * k}..{g * k + k - 1} do not share one prompt: pack_shared needs each "
                             "prompt's samples next to each other")
    L = max(len(prompt_ids[g * k]) + sum(len(response_ids[g * k + j]) for j in range(k)) for g in range(N))
    input_ids = torch.full((N, L), pad_id, dtype=torch.long)
    attention = torch.zeros((N, L), dtype=torch.long)
    segments = torch.full((N, L), -1, dtype=torch.long)
    position_ids = torch.zeros((N, L), dtype=torch.long)
    resp_tokens, resp_mask, resp_index = _response_tensors(response_ids, pad_id)
    for g in range(N):
        p = list(prompt_ids[g * k])
        P = len(p)
        input_ids[g, :P] = torch.tensor(p)
        segments[g, :P] = 0
        position_ids[g, :P] = torch.arange(P)
        off = P
        for j, i in enumerate(range(g * k, g * k + k), start=1):
            r = list(response_ids[i])
            n = len(r)
            if not n:
                continue
            input_ids[g, off:off + n] = torch.tensor(r)
            segments[g, off:off + n] = j
            position_ids[g, off:off + n] = torch.arange(P, P + n)
            resp_index[i, 0] = P - 1                     # the first token is predicted by the prompt's last position
            resp_index[i, 1:n] = torch.arange(off, off + n - 1)
            off += n
        attention[g, :off] = 1
    return PackedBatch(input_ids, attention, resp_index, resp_tokens, resp_mask, torch.arange(S) // k, segments, position_ids)


def _row_chunks(batch: PackedBatch, samples: int, order: torch.Tensor) -> list[torch.Tensor]:
    """Rows in ``order`` cut into chunks of about ``samples`` samples (whole rows), as sample indices."""
    rows = batch.row_samples()
    per_row = max(1, samples // max(1, max(len(r) for r in rows)))
    return [torch.cat([rows[int(r)] for r in order[s:s + per_row]]) for s in range(0, len(order), per_row)]


def minibatch_indices(batch: PackedBatch, size: int, mode: str, gen: torch.Generator) -> list[torch.Tensor]:
    """One PPO epoch's minibatches (sample indices, ``size`` samples each, whole rows). ``random``: a fresh
    permutation of the rows each epoch. ``by_length``: rows sorted by length are cut into minibatches,
    which are then shuffled. Each minibatch is cut to its longest row (``PackedBatch.select``), so grouping
    by length computes fewer padding columns (on CPU the update is most of a step), at the cost of the
    same grouping in every epoch."""
    n = batch.input_ids.shape[0]
    if mode == "by_length":
        groups = _row_chunks(batch, size, torch.argsort(batch.lengths, stable=True))
        return [groups[i] for i in torch.randperm(len(groups), generator=gen).tolist()]
    return _row_chunks(batch, size, torch.randperm(n, generator=gen))


def chunked_forward(fn, batch: PackedBatch, size: int) -> torch.Tensor:
    """``fn`` (a no-grad forward pass giving one row per sample) over chunks of about ``size`` samples of
    similar length, each cut to its longest row. Rows are independent, so this equals one pass over the
    batch."""
    chunks = _row_chunks(batch, size, torch.argsort(batch.lengths, stable=True))
    out = torch.cat([fn(batch.select(c)) for c in chunks])
    return out[torch.argsort(torch.cat(chunks))]


def policy_forward(model, batch: PackedBatch, with_entropy: bool = False):
    """log pi(response tokens) [S, R] (and per-token entropy) from one forward pass.

    Only the positions from the earliest response token on get logits (``logits_to_keep``): the
    vocabulary projection and log-softmax of prompt positions, whose logits nobody reads, are skipped
    (SmolLM2's vocabulary projection is a fifth of its forward FLOPs, and prompts are most positions)."""
    first = int(batch.resp_index[:, 0].min()) if batch.resp_index.numel() else 0
    keep = batch.input_ids.shape[1] - first
    try:
        logits = model(**batch.model_inputs(), logits_to_keep=keep).logits
    except TypeError:  # a model without logits_to_keep: every position
        logits, first = model(**batch.model_inputs()).logits, 0
    pos = (batch.resp_index - first).clamp(min=0)  # padding entries (index 0) are masked below
    # Row-major flat index of (row of the sample, position): one gather for every sample's tokens.
    flat = batch.sample_row.unsqueeze(1) * logits.shape[1] + pos
    resp_logits = logits.reshape(-1, logits.shape[-1])[flat]  # [S, R, V]
    logp = torch.log_softmax(resp_logits.float(), dim=-1)
    logprobs = torch.gather(logp, 2, batch.resp_tokens.unsqueeze(-1)).squeeze(-1) * batch.resp_mask
    if with_entropy:
        return logprobs, -(logp.exp() * logp).sum(-1) * batch.resp_mask
    return logprobs


def critic_forward(critic, batch: PackedBatch) -> torch.Tensor:
    values = critic(**batch.model_inputs())
    return values[batch.sample_row.unsqueeze(1), batch.resp_index] * batch.resp_mask

"""The few-shot LLM grader: P(true) = P(yes) / (P(yes) + P(no)) from the next-token distribution.

Two backends share one small interface, ``yes_no_logprobs(prefix, suffixes)``:

* ``TransformersBackend``: a local causal LM. The proposition prefix is run once and its KV cache is
  reused for every item of the batch (our own code: transformers has no prefix cache across a batch);
  items are batched by length and only the answer's logits are computed.
* ``OpenAICompletionsBackend``: any OpenAI-compatible ``/v1/completions`` endpoint returning logprobs,
  e.g. ``vllm serve``; vLLM's prefix caching then shares the prefix on the server side.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Sequence

import numpy as np

from ..rules.ruleset import RuleSet
from .base import GradeItem, GraderError
from .prompts import item_suffix, proposition_prefix

log = logging.getLogger(__name__)

YES_VARIANTS = ("yes", "Yes", "YES")
NO_VARIANTS = ("no", "No", "NO")


def _logsumexp(values: Sequence[float]) -> float:
    finite = [v for v in values if v != -math.inf]
    if not finite:
        return -math.inf
    m = max(finite)
    return m + math.log(sum(math.exp(v - m) for v in finite))


class LLMGrader:
    def __init__(self, rules: RuleSet, backend, share_prefix: bool = True):
        self.rules = rules
        self.backend = backend
        self.share_prefix = share_prefix
        self.name = f"llm:{backend.model_name}"

    def grade(self, items: Sequence[GradeItem], propositions: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(items), len(propositions)), dtype=np.float64)
        for j, name in enumerate(propositions):
            if name not in self.rules.propositions:
                raise GraderError(f"proposition {name!r} is not in rule set {self.rules.name!r}")
            prop = self.rules.propositions[name]
            prefix = proposition_prefix(self.rules, prop)
            suffixes = [item_suffix(prop, it.conversation, it.completion) for it in items]
            if self.share_prefix:
                lp_yes, lp_no = self.backend.yes_no_logprobs(prefix, suffixes)
            else:  # the naive baseline: one prompt at a time, nothing shared
                pairs = [self.backend.yes_no_logprobs(prefix, [s], share_prefix=False) for s in suffixes]
                lp_yes = np.concatenate([p[0] for p in pairs])
                lp_no = np.concatenate([p[1] for p in pairs])
            # P(yes | yes or no) = sigmoid(log P(yes) - log P(no)); two -inf (neither word likely) -> 0.5.
            diff = np.where(np.isneginf(lp_yes) & np.isneginf(lp_no), 0.0, lp_yes - lp_no)
            out[:, j] = 1.0 / (1.0 + np.exp(-np.clip(diff, -50, 50)))
        return out

    def describe(self) -> dict:
        return {"kind": "llm", **self.backend.describe(), "rules_fingerprint": self.rules.fingerprint}


class TransformersBackend:
    """A local causal LM on transformers.

    Where the time goes on CPU (SmolLM2-135M, 2 cores, gold-set items: ~270-token proposition prefix,
    ~420-token item suffix on average), and what this class does about it:

    * the shared prefix is run once per proposition and its KV cache reused by every item;
    * only the logits the answer needs are computed (``logits_to_keep``): projecting every position onto
      the 49k-token vocabulary costs about a quarter of the whole forward pass;
    * items are batched by length with bounded padding: right-padding a 140-token suffix to the width of a
      600-token one wastes more compute than sharing the prefix saves, which is why a batch of mixed
      lengths used to be no faster than one prompt at a time.

    ``max_padding`` is the fraction of padded tokens a batch may hold; ``max_batch_tokens`` caps a batch's
    padded size (memory). Results equal the one-prompt-at-a-time path (``share_prefix=False``) to float
    rounding: the model sees the same token ids at the same positions either way.
    """

    def __init__(self, model: str = "smollm2", batch_size: int = 8, device: str = "cpu", dtype: str = "float32",
                 max_padding: float = 0.15, max_batch_tokens: int = 8192):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..models import resolve_model

        self.model_name = model
        path = resolve_model(model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
        self.device = device
        self.batch_size = batch_size
        self.max_padding = max_padding
        self.max_batch_tokens = max_batch_tokens
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.yes_ids = self._single_token_ids(YES_VARIANTS)
        self.no_ids = self._single_token_ids(NO_VARIANTS)
        if not self.yes_ids or not self.no_ids:
            raise GraderError(f"tokenizer of {model} has no single-token yes/no words")

    def _single_token_ids(self, words: Sequence[str]) -> list[int]:
        """Token ids of each variant, with and without a leading space, that are one token."""
        ids = set()
        for w in words:
            for text in (w, " " + w):
                toks = self.tokenizer.encode(text, add_special_tokens=False)
                if len(toks) == 1:
                    ids.add(toks[0])
        return sorted(ids)

    def describe(self) -> dict:
        return {"backend": "transformers", "model": self.model_name, "batch_size": self.batch_size,
                "max_padding": self.max_padding, "max_batch_tokens": self.max_batch_tokens}

    def yes_no_logprobs(self, prefix: str, suffixes: Sequence[str], share_prefix: bool = True):
        import torch

        prefix_ids = self.tokenizer.encode(prefix, add_special_tokens=True)
        suffix_ids = [self.tokenizer.encode(s, add_special_tokens=False) for s in suffixes]
        lp_yes = np.empty(len(suffixes))
        lp_no = np.empty(len(suffixes))

        def record(idx, logprobs):
            for row, i in enumerate(idx):
                lp_yes[i] = torch.logsumexp(logprobs[row, self.yes_ids], 0).item()
                lp_no[i] = torch.logsumexp(logprobs[row, self.no_ids], 0).item()

        with torch.inference_mode():
            if not share_prefix:  # the naive baseline: each whole prompt on its own, nothing shared
                for i, s in enumerate(suffix_ids):
                    ids = torch.tensor([prefix_ids + s], device=self.device)
                    record([i], torch.log_softmax(self.model(input_ids=ids, logits_to_keep=1).logits[:, -1].float(), -1))
                return lp_yes, lp_no
            prefix_cache = self.model(torch.tensor([prefix_ids], device=self.device), use_cache=True,
                                      logits_to_keep=1).past_key_values
            for idx in self._length_batches([len(s) for s in suffix_ids]):
                record(idx, self._suffix_logprobs(len(prefix_ids), prefix_cache, [suffix_ids[i] for i in idx]))
        return lp_yes, lp_no

    def _length_batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices grouped into batches of similar length, longest first.

        A batch grows while it has fewer than ``batch_size`` rows, its padded size stays within
        ``max_batch_tokens`` and at most ``max_padding`` of it is padding. Sorted by length, that bound is
        cheap to keep: the first row is the widest."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches: list[list[int]] = []
        real = 0
        for i in order:
            batch = batches[-1] if batches else None
            if batch:
                width, rows = lengths[batch[0]], len(batch) + 1
                padded = width * rows
                if (rows <= self.batch_size and padded <= self.max_batch_tokens
                        and padded - (real + lengths[i]) <= self.max_padding * padded):
                    batch.append(i)
                    real += lengths[i]
                    continue
            batches.append([i])
            real = lengths[i]
        return batches

    def _suffix_logprobs(self, prefix_len: int, prefix_cache, batch_suffixes):
        """Log-softmax of the next token after prefix + suffix, for each suffix of the batch.

        Suffixes are right-padded and no padding mask is passed: with causal attention a padding token
        after a row's last real token cannot change that token's logits, and leaving the mask out keeps
        attention on the plain causal path.
        """
        import torch

        B = len(batch_suffixes)
        lengths = [len(s) for s in batch_suffixes]
        width = max(lengths)
        ids = torch.full((B, width), self.pad_id, dtype=torch.long)
        for b, s in enumerate(batch_suffixes):
            ids[b, : len(s)] = torch.tensor(s)
        cache = copy.deepcopy(prefix_cache)  # forward appends to the cache; keep the prefix pristine
        if B > 1:
            cache.batch_repeat_interleave(B)
        positions = torch.arange(prefix_len, prefix_len + width).unsqueeze(0).expand(B, -1)
        # Logits only at each row's last real token (a sorted tensor of positions, then a per-row pick).
        last = torch.tensor(lengths) - 1
        keep = torch.unique(last)
        out = self.model(input_ids=ids.to(self.device), past_key_values=cache, position_ids=positions.to(self.device),
                         use_cache=True, logits_to_keep=keep.to(self.device))
        column = torch.searchsorted(keep, last)
        return torch.log_softmax(out.logits[torch.arange(B), column.to(out.logits.device)].float(), dim=-1)


class OpenAICompletionsBackend:
    """Any OpenAI-compatible completions endpoint with logprobs (``vllm serve`` in production)."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, top_logprobs: int = 20,
                 timeout: float = 120.0, retries: int = 3, batch_size: int = 64):
        import httpx

        self.base_url = base_url.rstrip("/")
        self.model_name = model
        self.top_logprobs = top_logprobs
        self.retries = retries
        self.batch_size = batch_size
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout, headers=headers)

    def describe(self) -> dict:
        return {"backend": "openai-completions", "model": self.model_name, "url": self.base_url}

    def _post(self, prompts: list[str]) -> list[dict]:
        import httpx

        body = {"model": self.model_name, "prompt": prompts, "max_tokens": 1, "temperature": 0.0,
                "logprobs": self.top_logprobs}
        last_error: Exception | None = None
        for attempt in range(self.retries):
            try:
                resp = self.client.post(f"{self.base_url}/completions", json=body)
                if resp.status_code >= 500:
                    raise GraderError(f"grader endpoint {self.base_url} answered {resp.status_code}: {resp.text[:300]}")
                if resp.status_code >= 400:  # a client error will not fix itself by retrying
                    raise GraderError(f"grader endpoint {self.base_url} refused the request ({resp.status_code}): {resp.text[:300]}")
                choices = sorted(resp.json()["choices"], key=lambda c: c["index"])
                return choices
            except (httpx.TransportError, GraderError) as e:
                last_error = e
                if isinstance(e, GraderError) and "refused" in str(e):
                    break
                time.sleep(min(2 ** attempt, 10))
        raise GraderError(f"grader endpoint {self.base_url} failed after {self.retries} tries: {last_error}")

    def yes_no_logprobs(self, prefix: str, suffixes: Sequence[str], share_prefix: bool = True):
        lp_yes = np.full(len(suffixes), -math.inf)
        lp_no = np.full(len(suffixes), -math.inf)
        step = self.batch_size if share_prefix else 1
        for start in range(0, len(suffixes), step):
            choices = self._post([prefix + s for s in suffixes[start:start + step]])
            for k, choice in enumerate(choices):
                top = (choice.get("logprobs") or {}).get("top_logprobs") or [{}]
                first = top[0] or {}
                lp_yes[start + k] = _logsumexp([v for t, v in first.items() if t.strip() in YES_VARIANTS])
                lp_no[start + k] = _logsumexp([v for t, v in first.items() if t.strip() in NO_VARIANTS])
        return lp_yes, lp_no

"""The few-shot LLM grader: P(true) = P(yes) / (P(yes) + P(no)) from the next-token distribution.

Two backends share one small interface, ``yes_no_logprobs(prefix, suffixes)``:

* ``TransformersBackend``: a local causal LM. The proposition prefix is run once and its KV cache is
  reused for every item of the batch (our own code: transformers has no prefix cache across a batch,
  and on CPU the shared few-shot prefix is most of the compute).
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
    def __init__(self, model: str = "smollm2", batch_size: int = 8, device: str = "cpu", dtype: str = "float32"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..models import resolve_model

        self.model_name = model
        path = resolve_model(model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
        self.device = device
        self.batch_size = batch_size
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
        return {"backend": "transformers", "model": self.model_name, "batch_size": self.batch_size}

    def yes_no_logprobs(self, prefix: str, suffixes: Sequence[str], share_prefix: bool = True):
        import torch

        prefix_ids = self.tokenizer.encode(prefix, add_special_tokens=True)
        suffix_ids = [self.tokenizer.encode(s, add_special_tokens=False) for s in suffixes]
        lp_yes = np.empty(len(suffixes))
        lp_no = np.empty(len(suffixes))
        with torch.inference_mode():
            prefix_cache = None
            if share_prefix:
                prefix_out = self.model(torch.tensor([prefix_ids], device=self.device), use_cache=True)
                prefix_cache = prefix_out.past_key_values
            # Longest first: batches of similar length waste less compute on padding.
            order = sorted(range(len(suffixes)), key=lambda i: -len(suffix_ids[i]))
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                logprobs = self._last_token_logprobs(prefix_ids, prefix_cache, [suffix_ids[i] for i in idx])
                for row, i in enumerate(idx):
                    lp_yes[i] = torch.logsumexp(logprobs[row, self.yes_ids], 0).item()
                    lp_no[i] = torch.logsumexp(logprobs[row, self.no_ids], 0).item()
        return lp_yes, lp_no

    def _last_token_logprobs(self, prefix_ids, prefix_cache, batch_suffixes):
        """Log-softmax of the next token after prefix + suffix, for each suffix of the batch.

        Suffixes are right-padded: with causal attention the padding after a sequence's last real
        token cannot change that token's logits, so the prefix cache can be shared untouched.
        """
        import torch

        B = len(batch_suffixes)
        lengths = [len(s) for s in batch_suffixes]
        width = max(lengths)
        ids = torch.full((B, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, width), dtype=torch.long)
        for b, s in enumerate(batch_suffixes):
            ids[b, : len(s)] = torch.tensor(s)
            mask[b, : len(s)] = 1
        P = len(prefix_ids)
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)  # forward appends to the cache; keep the prefix pristine
            cache.batch_repeat_interleave(B)
            full_mask = torch.cat([torch.ones((B, P), dtype=torch.long), mask], dim=1)
            positions = torch.arange(P, P + width).unsqueeze(0).expand(B, -1)
            out = self.model(input_ids=ids.to(self.device), attention_mask=full_mask.to(self.device),
                             past_key_values=cache, position_ids=positions.to(self.device), use_cache=True)
            logits = out.logits
        else:
            prefix = torch.tensor(prefix_ids).unsqueeze(0).expand(B, -1)
            full_ids = torch.cat([prefix, ids], dim=1)
            full_mask = torch.cat([torch.ones((B, P), dtype=torch.long), mask], dim=1)
            logits = self.model(input_ids=full_ids.to(self.device), attention_mask=full_mask.to(self.device)).logits[:, P:]
        last = torch.tensor(lengths) - 1
        return torch.log_softmax(logits[torch.arange(B), last].float(), dim=-1)


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

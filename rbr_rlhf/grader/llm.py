"""The few-shot LLM grader: P(true) = P(yes) / (P(yes) + P(no)) from the next-token distribution.

Each (completion, proposition) prompt is three text segments, most shared first (see ``prompts.py``):
the grading guide, the item (one per completion), the question (one per proposition). Two backends
share one small interface, ``yes_no_logprobs(prompts, share_prefix)``:

* ``TransformersBackend``: a local causal LM. Each guide's KV cache is computed once and kept; an item
  and all its questions under one guide then run in ONE forward pass with a tree-shaped attention mask
  (our own code: transformers has no prefix cache across calls, and running each question on its own
  costs a forward pass each, measured 1.4x slower than the tree).
* ``OpenAICompletionsBackend``: any OpenAI-compatible ``/v1/completions`` endpoint returning logprobs,
  e.g. ``vllm serve``, whose automatic prefix caching shares the guide and each item on the server side.

``share_prefix=False`` is the naive baseline: every full prompt on its own, nothing shared or batched.
Both paths give the model the same token ids at the same positions, so they agree to float rounding.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from typing import Sequence

import numpy as np

from ..endpoints import logsumexp
from ..rules.ruleset import RuleSet
from .base import GradeItem, GraderError
from .prompts import grading_guide, item_block, question_block

log = logging.getLogger(__name__)

YES_VARIANTS = ("yes", "Yes", "YES")
NO_VARIANTS = ("no", "No", "NO")

# A prompt as its three segments: (guide, item, question).
Prompt = tuple[str, str, str]


def _crop_to(cache, length: int) -> None:
    """Drop the cache's tokens after ``length`` (transformers' ``crop`` takes how many to remove)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


class LLMGrader:
    def __init__(self, rules: RuleSet, backend, share_prefix: bool = True):
        self.rules = rules
        self.backend = backend
        self.share_prefix = share_prefix
        self.name = f"llm:{backend.model_name}"
        self.guides = {name: grading_guide(rules, prop) for name, prop in rules.propositions.items()}

    def grade(self, items: Sequence[GradeItem], propositions: Sequence[str]) -> np.ndarray:
        for name in propositions:
            if name not in self.rules.propositions:
                raise GraderError(f"proposition {name!r} is not in rule set {self.rules.name!r}")
        asked = [(self.guides[name], question_block(self.rules.propositions[name])) for name in propositions]
        # Item-major order: the prompts of one completion are adjacent, so those under one guide share it.
        prompts = [(guide, item_block(it.conversation, it.completion), q) for it in items for guide, q in asked]
        lp_yes, lp_no = self.backend.yes_no_logprobs(prompts, share_prefix=self.share_prefix)
        # P(yes | yes or no) = sigmoid(log P(yes) - log P(no)); two -inf (neither word likely) -> 0.5.
        diff = np.where(np.isneginf(lp_yes) & np.isneginf(lp_no), 0.0, lp_yes - lp_no)
        probs = 1.0 / (1.0 + np.exp(-np.clip(diff, -50, 50)))
        return probs.reshape(len(items), len(propositions)).astype(np.float64)

    def describe(self) -> dict:
        return {"kind": "llm", **self.backend.describe(), "rules_fingerprint": self.rules.fingerprint}


class TransformersBackend:
    """A local causal LM on transformers.

    Where the time goes on CPU (SmolLM2-135M, 2 cores, default rule set, gold-set items): the guide is
    about 2,800 tokens, an item about 420, a question about 45, and a completion of a safety response type
    is asked about 13 propositions. What this class does about it:

    * each guide's KV cache is computed once per process and reused by every item (about 10 s once for
      the ``guide`` layout; the ``per_proposition`` layout keeps one small guide per proposition);
    * an item and all its questions run in one forward pass on top of that cache. The attention mask is a
      tree: item tokens are causal; each question's tokens see the guide, the item and the earlier tokens
      of their own question, never another question; each question starts at the position right after
      the item. That is exactly what the model sees when the prompt runs alone, so the answer logits are
      the same (tests check it against ``share_prefix=False``);
    * only the logits of each question's last token are computed (``logits_to_keep``): projecting every
      position onto the 49k-token vocabulary costs about a quarter of a forward pass;
    * after the pass the cache is cropped back to the guide, so nothing is copied per item.

    ``max_forward_tokens`` caps the tokens of one pass (memory: the mask and attention scores grow with
    it); an item with more questions than fit is split into several passes that keep the item's KV.
    """

    def __init__(self, model: str = "smollm2", device: str = "cpu", dtype: str = "float32",
                 max_forward_tokens: int = 2048):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..models import resolve_model

        self.model_name = model
        path = resolve_model(model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        # sdpa (or eager) honours a custom 4D mask; flash-attention kernels would ignore the tree mask.
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype),
                                                          attn_implementation="sdpa").to(device).eval()
        self.device = device
        self.max_forward_tokens = max_forward_tokens
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.yes_ids = self._single_token_ids(YES_VARIANTS)
        self.no_ids = self._single_token_ids(NO_VARIANTS)
        if not self.yes_ids or not self.no_ids:
            raise GraderError(f"tokenizer of {model} has no single-token yes/no words")
        # guide text -> (ids, KV cache holding exactly the guide), least recently used first
        self._guides: OrderedDict[str, tuple[list[int], object]] = OrderedDict()
        self.max_cached_guides = 64
        self._lock = threading.Lock()  # a cached guide's KV is mutated (extended, then cropped) by each pass

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
        return {"backend": "transformers", "model": self.model_name, "max_forward_tokens": self.max_forward_tokens}

    def _ids(self, segment: str, first: bool = False) -> list[int]:
        # Segments are tokenized one by one and their ids concatenated, in both the shared and the naive
        # path, so both feed the model the same ids.
        return self.tokenizer.encode(segment, add_special_tokens=first)

    def _record(self, lp_yes, lp_no, i: int, logprobs) -> None:
        import torch

        lp_yes[i] = torch.logsumexp(logprobs[self.yes_ids], 0).item()
        lp_no[i] = torch.logsumexp(logprobs[self.no_ids], 0).item()

    def yes_no_logprobs(self, prompts: Sequence[Prompt], share_prefix: bool = True):
        import torch

        lp_yes = np.empty(len(prompts))
        lp_no = np.empty(len(prompts))
        with torch.inference_mode(), self._lock:
            if not share_prefix:  # the naive baseline: each whole prompt on its own, nothing shared
                for i, (guide, item, question) in enumerate(prompts):
                    ids = torch.tensor([self._ids(guide, first=True) + self._ids(item) + self._ids(question)], device=self.device)
                    logits = self.model(input_ids=ids, logits_to_keep=1).logits[0, -1]
                    self._record(lp_yes, lp_no, i, torch.log_softmax(logits.float(), -1))
                return lp_yes, lp_no
            # Group prompts by (guide, item), keeping order; each group is one item with its questions.
            groups: dict[tuple[str, str], list[int]] = {}
            for i, (guide, item, _) in enumerate(prompts):
                groups.setdefault((guide, item), []).append(i)
            for (guide, item), idx in groups.items():
                cache, guide_len = self._guide_cache(guide)
                try:
                    for i, logprobs in zip(idx, self._item_pass(cache, guide_len, self._ids(item),
                                                                 [self._ids(prompts[i][2]) for i in idx])):
                        self._record(lp_yes, lp_no, i, logprobs)
                finally:
                    _crop_to(cache, guide_len)  # back to exactly the guide, even after an error
        return lp_yes, lp_no

    def _guide_cache(self, guide: str):
        """The KV cache of the guide alone, computed once per guide text and kept (LRU)."""
        import torch

        if guide not in self._guides:
            ids = self._ids(guide, first=True)
            out = self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=True, logits_to_keep=1)
            self._guides[guide] = (ids, out.past_key_values)
            while len(self._guides) > self.max_cached_guides:
                self._guides.popitem(last=False)
        self._guides.move_to_end(guide)
        ids, cache = self._guides[guide]
        return cache, len(ids)

    def _item_pass(self, cache, guide_len: int, item_ids: list[int], question_ids: list[list[int]]):
        """Yield, for each question in order, the log-softmax of the token after guide + item + question.

        The first pass holds the item and as many questions as fit in ``max_forward_tokens``; the item's
        KV stays in the cache for any further passes, which hold only questions."""
        trunk, start = list(item_ids), 0
        while start < len(question_ids):
            end, size = start, len(trunk)
            while end < len(question_ids) and (end == start or size + len(question_ids[end]) <= self.max_forward_tokens):
                size += len(question_ids[end])
                end += 1
            yield from self._tree_forward(cache, trunk, question_ids[start:end])
            _crop_to(cache, guide_len + len(item_ids))  # keep guide + item, drop this pass's questions
            trunk, start = [], end

    def _tree_forward(self, cache, trunk: list[int], branches: list[list[int]]):
        """One forward pass of ``trunk`` (appended causally to the cache) and ``branches`` (each sees the
        cache, the trunk and itself). Returns the log-softmax at each branch's last token."""
        import torch

        past = cache.get_seq_length()
        n_trunk = len(trunk)
        n = n_trunk + sum(len(b) for b in branches)
        ids = torch.tensor([trunk + [t for b in branches for t in b]], device=self.device)
        positions = list(range(past, past + n_trunk))
        mask = torch.zeros(n, past + n, dtype=torch.bool)
        mask[:, :past + n_trunk] = True  # everything sees the cache and the trunk ...
        mask[:n_trunk, past:past + n_trunk] = torch.tril(torch.ones(n_trunk, n_trunk, dtype=torch.bool))  # ... causally
        last, offset = [], n_trunk
        for b in branches:
            k = len(b)
            mask[offset:offset + k, past + offset:past + offset + k] = torch.tril(torch.ones(k, k, dtype=torch.bool))
            positions += range(past + n_trunk, past + n_trunk + k)  # each branch starts right after the trunk
            offset += k
            last.append(offset - 1)
        keep = torch.tensor(last, device=self.device)
        out = self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=keep,
                         position_ids=torch.tensor([positions], device=self.device),
                         attention_mask=mask[None, None].to(self.device))
        return torch.log_softmax(out.logits[0].float(), dim=-1)


class OpenAICompletionsBackend:
    """Any OpenAI-compatible completions endpoint with logprobs (``vllm serve`` in production)."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, top_logprobs: int = 20,
                 timeout: float = 120.0, retries: int = 3, batch_size: int = 64):
        import httpx

        from ..endpoints import RetryPolicy

        self.base_url = base_url.rstrip("/")
        self.model_name = model
        self.top_logprobs = top_logprobs
        self.retry = RetryPolicy(tries=retries, backoff=1.0)
        self.batch_size = batch_size
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout, headers=headers)

    def describe(self) -> dict:
        return {"backend": "openai-completions", "model": self.model_name, "url": self.base_url}

    def _post(self, prompts: list[str]) -> list[dict]:
        from ..endpoints import EndpointError, request

        body = {"model": self.model_name, "prompt": prompts, "max_tokens": 1, "temperature": 0.0,
                "logprobs": self.top_logprobs}
        try:
            resp = request(self.client, "POST", f"{self.base_url}/completions", self.retry, json=body)
        except EndpointError as e:
            raise GraderError(f"grader endpoint: {e}") from None
        return sorted(resp.json()["choices"], key=lambda c: c["index"])

    def yes_no_logprobs(self, prompts: Sequence[Prompt], share_prefix: bool = True):
        lp_yes = np.full(len(prompts), -math.inf)
        lp_no = np.full(len(prompts), -math.inf)
        step = self.batch_size if share_prefix else 1
        texts = ["".join(p) for p in prompts]  # the server's prefix cache finds the shared guide and items
        for start in range(0, len(texts), step):
            choices = self._post(texts[start:start + step])
            for k, choice in enumerate(choices):
                top = (choice.get("logprobs") or {}).get("top_logprobs") or [{}]
                first = top[0] or {}
                lp_yes[start + k] = logsumexp([v for t, v in first.items() if t.strip() in YES_VARIANTS])
                lp_no[start + k] = logsumexp([v for t, v in first.items() if t.strip() in NO_VARIANTS])
        return lp_yes, lp_no

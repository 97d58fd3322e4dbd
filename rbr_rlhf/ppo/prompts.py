"""The prompts of a run: training prompts (safety and benign, mixed) and evaluation prompts."""

from __future__ import annotations

import logging

from .config import TrainConfig

log = logging.getLogger(__name__)


def _fits(tokenizer, max_tokens: int):
    from ..rollout.types import chat_prompt_ids

    return lambda r: len(chat_prompt_ids(tokenizer, r["conversation"])) <= max_tokens


def split_dev(rows: list[dict], n: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(training rows, dev rows): ``n`` rows drawn by ``seed`` are held out of training. The training reward
    of the policy's answers to them, measured as training goes, tells learning from drift without reading
    any held-out evaluation prompt (docs/experiment.md)."""
    import numpy as np

    if n <= 0:
        return rows, []
    if n >= len(rows):
        raise ValueError(f"data.dev_prompts={n} would leave no training prompts (there are {len(rows)})")
    dev = set(np.random.default_rng(seed).choice(len(rows), size=n, replace=False).tolist())
    return [r for i, r in enumerate(rows) if i not in dev], [r for i, r in enumerate(rows) if i in dev]


def load_prompts(cfg: TrainConfig, rules, tokenizer=None) -> tuple[list[dict], list[dict]]:
    """Training and evaluation prompts. Prompts longer than ``data.max_prompt_tokens`` (chat-templated)
    are left out: on CPU one long multi-turn prompt costs more than the rest of the batch."""
    from ..evaluation.evaluate import load_prompt_rows, load_xstest
    from ..pipeline.prompts import load_prompt_set

    rows = []
    if cfg.data.safety_prompts:
        rows += load_prompt_set(cfg.data.safety_prompts, limit=cfg.data.limit)
    if cfg.data.benign_prompts:
        rows += [{**r, "category": None} for r in load_prompt_set(cfg.data.benign_prompts, limit=cfg.data.limit)]
    eval_rows = []
    if cfg.data.eval_prompts:  # every prompt by its response type, "None" (comply) included
        eval_rows += load_prompt_rows(cfg.data.eval_prompts, rules, cfg.data.eval_limit)
    if cfg.data.xstest:
        eval_rows += load_xstest(cfg.data.xstest, cfg.data.xstest_limit, rules)
    if tokenizer is not None and cfg.data.max_prompt_tokens:
        fits = _fits(tokenizer, cfg.data.max_prompt_tokens)
        eval_rows = [r for r in eval_rows if fits(r)]
    # Training prompts may have a tighter cap: a step's update costs about its padded tokens, and the
    # evaluation's prompts stay as they are.
    train_cap = cfg.data.max_train_prompt_tokens or cfg.data.max_prompt_tokens
    if tokenizer is not None and train_cap:
        fits = _fits(tokenizer, train_cap)
        kept = [r for r in rows if fits(r)]
        key = "max_train_prompt_tokens" if cfg.data.max_train_prompt_tokens else "max_prompt_tokens"
        log.warning("%d of %d training prompts fit in data.%s=%d", len(kept), len(rows), key, train_cap)
        rows = kept
    return rows, eval_rows

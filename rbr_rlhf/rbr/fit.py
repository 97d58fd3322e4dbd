"""Fitting RBR weights with a hinge loss over comparisons, and the paper's error rate.

Data: completions of the same prompt, each with an intended completion class. For every pair of
completions of one prompt whose classes rank differently (``better`` ranks higher in the response
type's class order), the total reward must separate them by a margin:

    loss = mean over pairs of max(0, margin(better, worse) - (R_total(better) - R_total(worse)))
    R_total = R_rm + w . features      (R_rm = 0 for an RBR-only fit)

plus weight decay on w. Because R_rm sits inside the loss, the fitted RBR corrects the reward model
where it ranks completions wrongly instead of re-learning what it already gets right.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..rules.ruleset import RuleSet
from ..seeding import stable_fraction
from .features import feature_spec

log = logging.getLogger(__name__)


@dataclass
class Comparison:
    """One completion of a comparison set, with its features already computed."""

    prompt_id: str
    response_type: str
    completion_class: str
    features: np.ndarray
    rm_score: float = 0.0


@dataclass
class FitConfig:
    margin: float = 1.0
    # Per class-pair margins, "better>worse": margin, e.g. {"ideal>disallowed": 3.0}.
    class_pair_margins: dict[str, float] = field(default_factory=dict)
    weight_decay: float = 1e-3
    lr: float = 0.05
    steps: int = 600
    val_fraction: float = 0.2
    seed: int = 0
    pairs: str = "all"  # "all": every differently-ranked pair; "ideal": ideal vs every worse completion


def split_by_prompt(prompt_ids: Sequence[str], val_fraction: float, seed: int = 0) -> set[str]:
    """Validation prompts, chosen by a seeded hash so the split is stable and never splits a prompt."""
    val = set()
    for pid in sorted(set(prompt_ids)):
        h = stable_fraction(seed, pid)
        if h < val_fraction:
            val.add(pid)
    return val


def make_pairs(rules: RuleSet, comps: Sequence[Comparison], cfg: FitConfig) -> list[tuple[int, int, float]]:
    """(better index, worse index, margin) for completions of the same prompt."""
    by_prompt: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(comps):
        by_prompt[c.prompt_id].append(i)
    pairs = []
    for idx in by_prompt.values():
        rt = rules.response_type(comps[idx[0]].response_type)
        rank = {name: r for r, name in enumerate(rt.class_names)}
        for a in idx:
            for b in idx:
                ca, cb = comps[a].completion_class, comps[b].completion_class
                if rank[ca] >= rank[cb] or (cfg.pairs == "ideal" and rank[ca] != 0):
                    continue
                pairs.append((a, b, cfg.class_pair_margins.get(f"{ca}>{cb}", cfg.margin)))
    return pairs


def fit_response_type(X: np.ndarray, rm: np.ndarray, pairs: list[tuple[int, int, float]], cfg: FitConfig) -> np.ndarray:
    """Minimise the hinge loss for one response type's weight vector (full-batch Adam; small and convex)."""
    torch.manual_seed(cfg.seed)
    Xt, rmt = torch.tensor(X, dtype=torch.float64), torch.tensor(rm, dtype=torch.float64)
    better = torch.tensor([p[0] for p in pairs])
    worse = torch.tensor([p[1] for p in pairs])
    margin = torch.tensor([p[2] for p in pairs], dtype=torch.float64)
    w = torch.zeros(X.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([w], lr=cfg.lr)
    for _ in range(cfg.steps):
        opt.zero_grad()
        total = rmt + Xt @ w
        loss = torch.relu(margin - (total[better] - total[worse])).mean() + cfg.weight_decay * (w @ w)
        loss.backward()
        opt.step()
    return w.detach().numpy()


def error_rate(rules: RuleSet, comps: Sequence[Comparison], rewards: np.ndarray) -> dict:
    """The paper's error rate: with rewards centred on each prompt's ideal completion, the fraction of
    (ideal, non-ideal) comparisons where the non-ideal completion scores at or above the ideal one."""
    by_prompt: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(comps):
        by_prompt[c.prompt_id].append(i)
    errors: dict[str, list[int]] = defaultdict(list)
    pairwise: list[int] = []  # every differently-ranked pair, for data with few ideal completions
    for idx in by_prompt.values():
        rt = rules.response_type(comps[idx[0]].response_type)
        rank = {name: r for r, name in enumerate(rt.class_names)}
        ideal = [i for i in idx if comps[i].completion_class == rt.ideal]
        for i in ideal:
            for j in idx:
                if comps[j].completion_class != rt.ideal:
                    errors[rt.name].append(int(rewards[j] - rewards[i] >= 0))
        for i in idx:
            for j in idx:
                if rank[comps[i].completion_class] < rank[comps[j].completion_class]:
                    pairwise.append(int(rewards[j] - rewards[i] >= 0))
    all_errors = [e for v in errors.values() for e in v]
    return {
        "overall": float(np.mean(all_errors)) if all_errors else None,
        "comparisons": len(all_errors),
        "per_response_type": {rt: float(np.mean(v)) for rt, v in sorted(errors.items())},
        "pairwise": float(np.mean(pairwise)) if pairwise else None,
        "pairwise_comparisons": len(pairwise),
    }


def fit_rbr(rules: RuleSet, comps: Sequence[Comparison], cfg: FitConfig, has_rm: bool) -> tuple[dict, dict]:
    """Fit one weight vector per response type on training prompts; report held-out error rates.

    Returns (weights {response_type: {feature: weight}}, metrics). Two fits run: with R_rm inside the
    loss (the weights we keep, when RM scores exist) and RBR-only (R_rm = 0), so the report can show
    RM-only, RBR-only and RM+RBR side by side as in the paper.
    """
    val_prompts = split_by_prompt([c.prompt_id for c in comps], cfg.val_fraction, cfg.seed)
    train = [c for c in comps if c.prompt_id not in val_prompts]
    val = [c for c in comps if c.prompt_id in val_prompts]
    weights: dict[str, dict[str, float]] = {}
    rbr_only_weights: dict[str, np.ndarray] = {}
    fitted: dict[str, np.ndarray] = {}
    n_pairs = {}
    # Every response type of the rule set gets a weight vector, so the weights are complete for it; one
    # without comparisons stays at zero (R_rbr = 0) and is listed in the metrics as unfitted.
    for rt_name in sorted(rules.response_types):
        sub = [c for c in train if rules.response_type(c.response_type).name == rt_name]
        spec = feature_spec(rules, rt_name)
        pairs = make_pairs(rules, sub, cfg)
        n_pairs[rt_name] = len(pairs)
        if not pairs:
            log.warning("response type %s has no training comparisons; its weights stay zero", rt_name)
            fitted[rt_name] = rbr_only_weights[rt_name] = np.zeros(len(spec))
        else:
            X = np.stack([c.features for c in sub])
            rm = np.array([c.rm_score for c in sub]) if has_rm else np.zeros(len(sub))
            fitted[rt_name] = fit_response_type(X, rm, pairs, cfg)
            rbr_only_weights[rt_name] = fit_response_type(X, np.zeros(len(sub)), pairs, cfg) if has_rm else fitted[rt_name]
        weights[rt_name] = {n: float(v) for n, v in zip(spec.names, fitted[rt_name])}

    def rewards(cs: Sequence[Comparison], use_rm: bool, w: dict[str, np.ndarray] | None) -> np.ndarray:
        out = np.zeros(len(cs))
        for i, c in enumerate(cs):
            rt = rules.response_type(c.response_type).name
            out[i] = (c.rm_score if use_rm else 0.0) + (float(w[rt] @ c.features) if w is not None else 0.0)
        return out

    def report(cs):
        return {
            "rm_only": error_rate(rules, cs, rewards(cs, True, None)) if has_rm else None,
            "rbr_only": error_rate(rules, cs, rewards(cs, False, rbr_only_weights)),
            "rm_plus_rbr": error_rate(rules, cs, rewards(cs, True, fitted)) if has_rm else None,
        }

    held_out = report(val) if val else report(train)
    metrics = {
        "error_rate": {**{k: (v["overall"] if v else None) for k, v in held_out.items()},
                       "n": held_out["rbr_only"]["comparisons"]},
        "error_rate_per_response_type": {k: (v["per_response_type"] if v else None) for k, v in held_out.items()},
        # The share of all differently-ranked pairs ordered wrongly (ties count): defined even where a
        # prompt has no ideal completion, which a weak writer often fails to produce.
        "pairwise_error_rate": {k: (v["pairwise"] if v else None) for k, v in held_out.items()},
        "pairwise_comparisons_val": held_out["rbr_only"]["pairwise_comparisons"],
        "error_rate_train": {k: (v["overall"] if v else None) for k, v in report(train).items()},
        "pairwise_error_rate_train": {k: (v["pairwise"] if v else None) for k, v in report(train).items()},
        "evaluated_on": "held-out prompts" if val else "training prompts (no held-out prompts: data too small)",
        "prompts": {"train": len({c.prompt_id for c in train}), "val": len(val_prompts)},
        "train_pairs": n_pairs,
        "unfitted_response_types": sorted(rt for rt, n in n_pairs.items() if n == 0),
        "comparisons_val": held_out["rbr_only"]["comparisons"],
    }
    return weights, metrics

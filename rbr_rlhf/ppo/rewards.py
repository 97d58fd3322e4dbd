"""The PPO reward: R = R_rm + w * R_rbr on safety prompts, R = R_rm elsewhere.

Human-PPO (docs/experiment.md) adds a second reward model trained on people's safety preferences instead
of (or beside) the RBR: R = R_rm + w_s * R_safety_rm (+ w * R_rbr) on safety prompts.

R_rm comes from the helpful reward model (``RewardModel.reward``); R_rbr from the grader service
(``GraderClient.rbr_scores``, one ``RBRScore`` per completion), which also returns each completion's class probabilities, logged per response type. A grader
failure raises: a missing RBR term is never replaced by zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from ..rbr.score import RBRScore
from ..rules.ruleset import RuleSet
from .records import Reward


class RBRScorer(Protocol):
    """What the reward needs of the RBR: the grader service's client (``service.client.GraderClient``)."""

    def rbr_scores(self, items: list[dict]) -> list[RBRScore]: ...


@dataclass
class RunningMoments:
    """Running mean/std of sequence rewards (Welford), for optional reward normalisation."""

    count: float = 1e-4
    mean: float = 0.0
    var: float = 1.0

    def update(self, x: np.ndarray) -> None:
        n, m, v = len(x), float(np.mean(x)), float(np.var(x))
        delta, total = m - self.mean, self.count + n
        self.mean += delta * n / total
        self.var = (self.var * self.count + v * n + delta ** 2 * self.count * n / total) / total
        self.count = total

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "var": self.var}

    def load_state_dict(self, s: dict) -> None:
        self.count, self.mean, self.var = s["count"], s["mean"], s["var"]


@dataclass
class ScoredBatch:
    r_rm: np.ndarray
    r_rbr: np.ndarray          # nan where the RBR does not apply
    total: np.ndarray
    response_types: list[str | None]
    top_classes: list[str | None]
    refused: list[bool | None]  # for should-comply prompts: did the completion refuse? (rule-set semantics)
    extras: list[RBRScore | None] = field(default_factory=list)
    raw_total: np.ndarray | None = None  # R_rm + w * R_rbr before normalisation and clipping
    safety: list[bool] = field(default_factory=list)  # safety prompt (the RBR term applies)?
    r_safety: np.ndarray | None = None  # R_safety_rm, nan where it does not apply (None: no safety RM)

    def records(self) -> list[Reward]:
        """One typed ``Reward`` per completion."""
        def safety_rm(i):
            return None if self.r_safety is None or math.isnan(self.r_safety[i]) else float(self.r_safety[i])

        return [Reward(float(self.r_rm[i]), None if math.isnan(self.r_rbr[i]) else float(self.r_rbr[i]),
                       float(self.total[i]), bool(self.safety[i]) if self.safety else False, self.response_types[i],
                       self.top_classes[i], self.refused[i], safety_rm(i)) for i in range(len(self.total))]


class RewardFunction:
    def __init__(self, rules: RuleSet, reward_model, rbr: RBRScorer | None, rbr_weight: float = 1.0,
                 benign_categories: Sequence[str] = ("None",), normalize: bool = False, clip: float | None = None,
                 safety_rm=None, safety_weight: float = 1.0):
        self.rules, self.rm, self.rbr = rules, reward_model, rbr
        self.safety_rm, self.safety_weight = safety_rm, safety_weight  # Human-PPO's second reward model
        self.rbr_weight, self.benign = rbr_weight, set(benign_categories)
        self.normalize, self.clip = normalize, clip
        self.moments = RunningMoments()
        # "Did a should-comply completion refuse?" for the training log, by the rule set's own semantics
        # (the ``evaluation:`` section); without it the refusal rate is not logged.
        sem = rules.evaluation
        self._comply_types = set(sem.should_comply) if sem is not None else set()
        self._refusal = sem.refusal if sem is not None else None
        self._refusal_props = set(rules.formula_propositions(sem.refusal)) if sem is not None else set()

    def is_safety_prompt(self, category: str | None) -> bool:
        return category is not None and category not in self.benign and self.rules.find_response_type(category) is not None

    def __call__(self, conversations: list, completions: list[str], categories: list[str | None],
                 update_stats: bool = True) -> ScoredBatch:
        """Rewards of a batch. ``update_stats=False`` (evaluation) normalises with the running statistics
        as they are and leaves them unchanged: scoring held-out completions must not move training state."""
        r_rm = np.asarray(self.rm.reward(conversations, completions), dtype=np.float64)
        r_rbr = np.full(len(completions), math.nan)
        rts, classes, refused, extras = [None] * len(completions), [None] * len(completions), [None] * len(completions), [None] * len(completions)
        safety = [i for i, c in enumerate(categories) if self.is_safety_prompt(c)]
        if self.rbr is not None and safety:
            results = self.rbr.rbr_scores([{"conversation": conversations[i], "completion": completions[i],
                                            "category": categories[i]} for i in safety])
            for i, res in zip(safety, results):
                if not res.rbr_applies or res.r_rbr is None:
                    raise RuntimeError(f"the RBR scorer returned no R_rbr for a safety prompt (category {categories[i]!r})")
                r_rbr[i] = res.r_rbr
                rts[i] = res.response_type
                classes[i] = res.top_class
                probs = res.proposition_probs
                if rts[i] in self._comply_types and self._refusal_props <= set(probs):
                    refused[i] = self.rules.formula_probability(self._refusal, probs) >= 0.5
                extras[i] = res
        r_safety = None
        if self.safety_rm is not None:
            r_safety = np.full(len(completions), math.nan)
            if safety:
                r_safety[safety] = np.asarray(self.safety_rm.reward([conversations[i] for i in safety],
                                                                    [completions[i] for i in safety]), dtype=np.float64)
        total = raw_total = r_rm + self.rbr_weight * np.nan_to_num(r_rbr, nan=0.0)
        if r_safety is not None:
            total = raw_total = total + self.safety_weight * np.nan_to_num(r_safety, nan=0.0)
        if self.normalize:
            if update_stats:
                self.moments.update(total)
            total = (total - self.moments.mean) / math.sqrt(self.moments.var + 1e-8)
        if self.clip is not None:
            total = np.clip(total, -self.clip, self.clip)
        is_safety = [False] * len(completions)
        for i in safety:
            is_safety[i] = True
        return ScoredBatch(r_rm, r_rbr, total, rts, classes, refused, extras, raw_total, is_safety, r_safety)

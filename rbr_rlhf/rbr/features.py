"""RBR features: proposition probabilities plus class probabilities, per response type.

For a (prompt, completion, response type) the feature vector is

    [P(p) for each proposition p the response type's classes use] + [P(c) for each class c]

with class probabilities computed from proposition probabilities by ``RuleSet.class_probabilities``
(for the paper's conjunctions: products, negations as 1-p, negated derived propositions as
1-P(conjunction); for formulas with ``or``, ``otherwise`` or ``first_match``: exact under independence;
normalised).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..grader.base import GradeItem, Grader
from ..rules.ruleset import RuleSet


@dataclass(frozen=True)
class FeatureSpec:
    """Names of a response type's features, in order."""

    response_type: str
    propositions: tuple[str, ...]
    classes: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        return [f"prop:{p}" for p in self.propositions] + [f"class:{c}" for c in self.classes]

    def __len__(self) -> int:
        return len(self.propositions) + len(self.classes)


def feature_spec(rules: RuleSet, response_type: str) -> FeatureSpec:
    rt = rules.response_type(response_type)
    return FeatureSpec(rt.name, tuple(rules.propositions_for(rt.name)), tuple(rt.class_names))


def features_from_probs(rules: RuleSet, response_type: str, probs: Mapping[str, float]) -> np.ndarray:
    spec = feature_spec(rules, response_type)
    class_probs = rules.class_probabilities(probs, spec.response_type)
    return np.array([float(probs[p]) for p in spec.propositions] + [class_probs[c] for c in spec.classes])


@dataclass
class GradedCompletion:
    """Everything the grader says about one completion."""

    response_type: str
    proposition_probs: dict[str, float]
    class_probs: dict[str, float]
    features: np.ndarray

    @property
    def top_class(self) -> str:
        return max(self.class_probs, key=self.class_probs.get)


def grade_completions(rules: RuleSet, grader: Grader, items: Sequence[GradeItem],
                      response_types: Sequence[str]) -> list[GradedCompletion]:
    """Grade a batch of completions of mixed response types with one grader call.

    All items are graded on the union of propositions their response types need, so the grader sees
    one large batch (what makes batching pay) rather than one small batch per response type.
    """
    if len(items) != len(response_types):
        raise ValueError("items and response_types differ in length")
    rts = [rules.response_type(r).name for r in response_types]
    needed = [p for p in rules.propositions if any(p in rules.propositions_for(rt) for rt in set(rts))]
    probs = grader.grade(items, needed) if items else np.zeros((0, len(needed)))
    out = []
    for i, rt in enumerate(rts):
        row = {p: float(probs[i, j]) for j, p in enumerate(needed)}
        used = {p: row[p] for p in rules.propositions_for(rt)}
        out.append(GradedCompletion(rt, used, rules.class_probabilities(used, rt), features_from_probs(rules, rt, used)))
    return out

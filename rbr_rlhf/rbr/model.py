"""The RBR itself: a linear model over features, one weight vector per response type.

    R_rbr(prompt, completion) = w[response_type] . features(prompt, completion)

Weights are saved as JSON (small, human-readable, nothing executable) with the rule-set fingerprint
they were fitted for, the reward model they were fitted against, and the fit metrics. Loading them
against another rule set raises FingerprintMismatch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data import write_json
from ..rules.ruleset import RuleSet
from .features import GradedCompletion, feature_spec

FORMAT_VERSION = 1


@dataclass
class RBRWeights:
    rules_fingerprint: str
    weights: dict[str, dict[str, float]]  # response type -> feature name -> weight
    reward_model: str | None = None
    metrics: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    def vector(self, rules: RuleSet, response_type: str) -> np.ndarray:
        spec = feature_spec(rules, response_type)
        named = self.weights.get(spec.response_type)
        if named is None:
            raise KeyError(f"RBR weights have no entry for response type {spec.response_type!r} (have {sorted(self.weights)})")
        return np.array([named.get(n, 0.0) for n in spec.names])

    def reward(self, rules: RuleSet, graded: GradedCompletion) -> float:
        return float(self.vector(rules, graded.response_type) @ graded.features)

    def contributions(self, rules: RuleSet, graded: GradedCompletion) -> dict[str, float]:
        """Each feature's share of R_rbr: weight x value, for explanations."""
        spec = feature_spec(rules, graded.response_type)
        w = self.vector(rules, graded.response_type)
        return {n: float(wi * fi) for n, wi, fi in zip(spec.names, w, graded.features)}

    # ------------------------------------------------------------------ I/O
    def save(self, path: str | Path) -> None:
        write_json(path, {"format_version": FORMAT_VERSION, "rules_fingerprint": self.rules_fingerprint,
                          "reward_model": self.reward_model, "weights": self.weights,
                          "metrics": self.metrics, "config": self.config})

    @classmethod
    def load(cls, path: str | Path, rules: RuleSet | None = None) -> "RBRWeights":
        path = Path(path)
        if path.is_dir():
            path = path / "rbr_weights.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"RBR weights file {path} does not exist") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a valid RBR weights file ({e.msg})") from None
        for key in ("rules_fingerprint", "weights"):
            if key not in data:
                raise ValueError(f"{path}: missing key {key!r}; not an RBR weights file")
        weights = cls(data["rules_fingerprint"], data["weights"], data.get("reward_model"),
                      data.get("metrics", {}), data.get("config", {}))
        if rules is not None:
            rules.check_fingerprint(weights.rules_fingerprint, f"RBR weights {path}")
        return weights

"""Rule selection and pair labelling (Li et al. 2025, "Data-adaptive Safety Rules for Training Reward
Models"): a pair is judged by the few rules on which its two responses differ most.

For a pair (A, B) with rule scores s_i(A), s_i(B) in [-1, 1]:

* discrepancy d_i = |s_i(A) - s_i(B)|, optionally plus ``relevance_weight * relevance_i`` where
  relevance_i = 1 - (P_irr,i(A) + P_irr,i(B)) / 2 (rules the judge finds irrelevant to both rank lower);
* the top-k rules by that value, ties broken by pool order (the lower index wins), so the selection is
  a pure function of the scores;
* label: A is chosen when sum_{i in S} s_i(A) > sum_{i in S} s_i(B), B when smaller; an exact tie
  (within ``tie_eps``) drops the pair, or keeps the dataset's own label (``on_tie="original"``).

Baselines from the same scores: every rule summed (``all``), k rules drawn at random per pair with a
seeded hash (``random``), and the dataset's label (``original``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..seeding import stable_hash
from .scoring import JudgeItem

SCHEMES = ("adaptive", "all", "random", "original")


@dataclass(frozen=True)
class PrefPair:
    """A preference pair: the shared conversation, response A (the dataset's chosen) and B (rejected)."""

    conversation: tuple[dict, ...]
    a: str
    b: str

    @property
    def items(self) -> tuple[JudgeItem, JudgeItem]:
        return JudgeItem.make(list(self.conversation), self.a), JudgeItem.make(list(self.conversation), self.b)

    def key(self) -> str:
        return hashlib.sha256(repr((self.conversation, self.a, self.b)).encode()).hexdigest()[:16]


def pair_from_texts(chosen: str, rejected: str) -> PrefPair:
    """A PrefPair from two rendered HH dialogues that share every turn but the last assistant turn."""
    from ..rm.text import parse_hh_dialogue

    c, r = parse_hh_dialogue(chosen), parse_hh_dialogue(rejected)
    if c[-1]["role"] != "assistant" or r[-1]["role"] != "assistant":
        raise ValueError("a preference pair must end in an assistant turn on both sides")
    # HH-RLHF pairs share the conversation; where they do not, take the chosen side's (and say so in the
    # label: the rule judge then sees each response with that one conversation).
    return PrefPair(tuple(c[:-1]), c[-1]["content"], r[-1]["content"])


def load_pref_pairs(path: str, limit: int | None = None) -> list[PrefPair]:
    from ..rm.text import load_pairs

    pairs = []
    for i, (chosen, rejected) in enumerate(load_pairs(path, limit), 1):
        try:
            pairs.append(pair_from_texts(chosen, rejected))
        except ValueError as e:
            raise ValueError(f"{path}: pair {i}: {e}") from None
    return pairs


@dataclass
class SelectionConfig:
    k: int = 5
    relevance_weight: float = 0.0   # > 0 adds the relevance term to the discrepancy
    on_tie: str = "drop"            # "drop" the pair, or keep the "original" label
    tie_eps: float = 1e-9
    seed: int = 0                   # for the random-k baseline

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"k must be at least 1 (got {self.k})")
        if self.on_tie not in ("drop", "original"):
            raise ValueError(f"on_tie must be 'drop' or 'original' (got {self.on_tie!r})")


def discrepancy(s_a: np.ndarray, s_b: np.ndarray, irr_a: np.ndarray | None = None, irr_b: np.ndarray | None = None,
                relevance_weight: float = 0.0) -> np.ndarray:
    d = np.abs(np.asarray(s_a, dtype=np.float64) - np.asarray(s_b, dtype=np.float64))
    if relevance_weight and irr_a is not None and irr_b is not None:
        d = d + relevance_weight * (1.0 - (np.asarray(irr_a) + np.asarray(irr_b)) / 2.0)
    return d


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first; equal values in index order (deterministic)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.lexsort((np.arange(len(values)), -values))  # last key is primary: value desc, then index asc
    return order[: min(k, len(values))]


def select_rules(s_a, s_b, irr_a=None, irr_b=None, cfg: SelectionConfig = SelectionConfig()) -> np.ndarray:
    return top_k(discrepancy(s_a, s_b, irr_a, irr_b, cfg.relevance_weight), cfg.k)


def random_rules(pair_key: str, n_rules: int, k: int, seed: int = 0) -> np.ndarray:
    """k distinct rule indices drawn per pair from a seeded hash: the same pair gets the same draw."""
    h = stable_hash(seed, pair_key, digits=16)
    return np.sort(np.random.default_rng(h).choice(n_rules, size=min(k, n_rules), replace=False))


def label_from_rules(s_a, s_b, idx: np.ndarray, tie_eps: float = 1e-9) -> int:
    """+1: A is better, -1: B is better, 0: tie (sums of the selected rules' scores)."""
    diff = float(np.sum(np.asarray(s_a)[idx]) - np.sum(np.asarray(s_b)[idx]))
    return 0 if abs(diff) <= tie_eps else (1 if diff > 0 else -1)


@dataclass
class Labelled:
    label: int          # +1 A chosen, -1 B chosen, 0 dropped (tie)
    rules: np.ndarray   # indices of the rules the label used (empty for "original")


def label_pair(scheme: str, s_a, s_b, irr_a=None, irr_b=None, pair_key: str = "",
               cfg: SelectionConfig = SelectionConfig()) -> Labelled:
    """The label one scheme gives a pair whose A is the dataset's chosen response."""
    n = len(s_a)
    if scheme == "original":
        return Labelled(1, np.array([], dtype=int))
    if scheme == "adaptive":
        idx = select_rules(s_a, s_b, irr_a, irr_b, cfg)
    elif scheme == "all":
        idx = np.arange(n)
    elif scheme == "random":
        idx = random_rules(pair_key, n, cfg.k, cfg.seed)
    else:
        raise ValueError(f"unknown labelling scheme {scheme!r} (expected one of {', '.join(SCHEMES)})")
    lab = label_from_rules(s_a, s_b, idx, cfg.tie_eps)
    if lab == 0 and cfg.on_tie == "original":
        lab = 1
    return Labelled(lab, idx)


def label_pairs(scheme: str, pairs: Sequence[PrefPair], probs_a: np.ndarray, probs_b: np.ndarray,
                cfg: SelectionConfig = SelectionConfig()) -> list[Labelled]:
    """Labels for many pairs from [N, R, 3] probability arrays (A = dataset chosen)."""
    s_a, irr_a = probs_a[..., 0] - probs_a[..., 1], probs_a[..., 2]
    s_b, irr_b = probs_b[..., 0] - probs_b[..., 1], probs_b[..., 2]
    return [label_pair(scheme, s_a[n], s_b[n], irr_a[n], irr_b[n], p.key(), cfg) for n, p in enumerate(pairs)]


def agreement(labels: Sequence[Labelled]) -> dict:
    """How often a scheme agrees with the dataset's (human) choice: A is the human's chosen response.

    ``agreement`` counts only the pairs the scheme labels (ties dropped); ``agreement_ties_wrong``
    counts a dropped pair as a disagreement (the stricter figure); ``coverage`` is the labelled share."""
    n = len(labels)
    kept = [l for l in labels if l.label != 0]
    agree = sum(1 for l in kept if l.label == 1)
    return {"pairs": n, "labelled": len(kept), "coverage": len(kept) / n if n else float("nan"),
            "agreement": agree / len(kept) if kept else float("nan"),
            "agreement_ties_wrong": agree / n if n else float("nan")}


def relabelled_rows(pairs: Sequence[PrefPair], labels: Sequence[Labelled]) -> list[dict]:
    """chosen/rejected rows (HH dialogue strings) in the scheme's order; ties are left out."""
    from ..rm.text import render_dialogue

    rows = []
    for p, l in zip(pairs, labels):
        if l.label == 0:
            continue
        chosen, rejected = (p.a, p.b) if l.label == 1 else (p.b, p.a)
        rows.append({"chosen": render_dialogue(list(p.conversation), chosen),
                     "rejected": render_dialogue(list(p.conversation), rejected)})
    return rows

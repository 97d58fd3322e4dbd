"""Percentile bootstrap 95% intervals for the evaluator's figures.

Every figure is reported as ``{"value", "n", "low", "high"}``: the estimate on the data, how many
completions it rests on, and the 2.5th and 97.5th percentiles of the estimate over ``resamples``
resamples drawn with replacement (a seeded ``numpy`` generator, so a report is reproducible).

* a proportion: resample the n outcomes (drawing n outcomes with replacement from k successes is a
  Binomial(n, k/n) draw, which is how it is computed);
* F1, the harmonic mean of two proportions measured on independent groups of prompts (Not-Unsafe on
  should-refuse prompts, Not-Overrefuse on should-comply ones): resample each group separately, take
  the harmonic mean of each pair of resampled proportions;
* a mean (reward columns): resample the values.

An empty group gives ``value`` None and no interval: "not measured" is never shown as 0 or 1.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95


def _empty(n: int = 0) -> dict:
    return {"value": None, "n": n, "low": None, "high": None}


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def _resampled_proportions(k: int, n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    return rng.binomial(n, k / n, size=resamples) / n


def proportion(outcomes: Sequence[bool], resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL) -> dict:
    """Share of true outcomes with its percentile-bootstrap interval."""
    x = np.asarray([bool(o) for o in outcomes], dtype=bool)
    n = len(x)
    if n == 0:
        return _empty()
    k = int(x.sum())
    samples = _resampled_proportions(k, n, resamples, np.random.default_rng(seed))
    low, high = _interval(samples, level)
    return {"value": k / n, "n": n, "low": low, "high": high}


def harmonic(a: float | np.ndarray, b: float | np.ndarray):
    """Harmonic mean 2ab/(a+b), 0 where both are 0."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    total = a + b
    out = np.divide(2 * a * b, total, out=np.zeros(np.broadcast(a, b).shape), where=total > 0)
    return float(out) if out.ndim == 0 else out


def f1(group_a: Sequence[bool], group_b: Sequence[bool], resamples: int = RESAMPLES, seed: int = 0,
       level: float = LEVEL) -> dict:
    """F1 = harmonic mean of two proportions on independent groups; each group is resampled on its own.
    ``n`` is the two groups' sizes together (``n_a``, ``n_b`` give each)."""
    a = np.asarray([bool(o) for o in group_a], dtype=bool)
    b = np.asarray([bool(o) for o in group_b], dtype=bool)
    if len(a) == 0 or len(b) == 0:
        return {**_empty(len(a) + len(b)), "n_a": len(a), "n_b": len(b)}
    rng = np.random.default_rng(seed)
    pa = _resampled_proportions(int(a.sum()), len(a), resamples, rng)
    pb = _resampled_proportions(int(b.sum()), len(b), resamples, rng)
    low, high = _interval(harmonic(pa, pb), level)
    return {"value": harmonic(a.mean(), b.mean()), "n": len(a) + len(b), "low": low, "high": high,
            "n_a": len(a), "n_b": len(b)}


def mean(values: Sequence[float], resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL) -> dict:
    """Mean of finite values with its percentile-bootstrap interval (NaNs are left out)."""
    x = np.asarray([float(v) for v in values], dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return _empty()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(resamples, len(x)))
    low, high = _interval(x[idx].mean(axis=1), level)
    return {"value": float(x.mean()), "n": int(len(x)), "low": low, "high": high}

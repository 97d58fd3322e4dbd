"""The training run's before/after safety evaluation: the same code as ``rbr-rlhf eval``.

It generates greedy completions from whatever policy the rollout engine serves and hands them to
``rbr_rlhf.evaluation.evaluate`` (Not-Unsafe, Not-Overrefuse, F1, Hard-Refusal-Style, XSTest, each with
n and a bootstrap 95% interval; XSTest's string match beside the judge), with the recipe's judge
(``evaluation.judge``) and the rule set's evaluation semantics. The training reward's means are added as
reference columns, computed without updating the reward normaliser (``update_stats=False``).
"""

from __future__ import annotations

from ..evaluation.evaluate import load_xstest  # noqa: F401  (the loader lives with the evaluator)


def evaluate_policy(engine, rows: list[dict], judge, rules, max_tokens: int = 64, reward_fn=None,
                    judge_spec: str | None = None, reward_grader: str | None = None, resamples: int = 1000,
                    seed: int = 0) -> dict:
    """Greedy completions for ``rows`` (each with ``conversation`` and ``response_type`` or ``xstest``),
    judged by ``judge``. Changes no training state: greedy decoding, a private bootstrap generator, and
    the reward called with ``update_stats=False``."""
    from ..evaluation.evaluate import evaluate_policy as _evaluate

    if not rows:
        return {}
    return _evaluate(engine, rows, judge, rules, max_tokens, judge_spec=judge_spec, reward_grader=reward_grader,
                     reward_fn=reward_fn, resamples=resamples, seed=seed)

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


class RunEvaluation:
    """The run's before/after evaluation (rank 0): ``rbr-rlhf eval``'s code with the recipe's judge.

    Without evaluation semantics in the rule set, or without any judge, it warns once and is skipped.
    With no ``evaluation.judge`` it falls back to the reward's grader and says the result is not
    independent of the reward. The judge is loaded on first use.
    """

    def __init__(self, cfg, rules, rows: list[dict]):
        from ..evaluation.evaluate import independence

        self.cfg, self.rules, self.rows = cfg, rules, rows
        self.reward_grader = cfg.rbr.grader if cfg.rbr.enabled else None
        self.spec = cfg.evaluation.judge or self.reward_grader
        self.judge = None
        self.skip: str | None = None
        if rules.evaluation is None:
            self.skip = (f"the rule set {rules.name!r} ({rules.source}) has no 'evaluation:' section, so the run "
                         "cannot say what counts as a refusal or as unsafe: skipping the safety evaluation. Add the "
                         "section (docs/rules.md, 'Evaluation semantics') to get the before/after table.")
        elif not self.spec:
            self.skip = "no judge (evaluation.judge is unset and the RBR is off): skipping the safety evaluation"
        if self.skip:
            print(f"[eval] warning: {self.skip}", flush=True)
        elif not cfg.evaluation.judge:
            print(f"[eval] warning: evaluation.judge is unset: the reward's own grader {self.spec!r} judges, so the "
                  "evaluation is NOT independent of the reward (set evaluation.judge; docs/evaluation.md)", flush=True)
        else:
            independence(self.spec, self.reward_grader)

    def run(self, stage: str, engine, reward_fn) -> dict:
        from ..evaluation.evaluate import render_markdown
        from ..grader.factory import build_grader

        if self.skip:
            return {"skipped": self.skip}
        if self.judge is None:
            self.judge = build_grader(self.spec, self.rules)
        e = self.cfg.evaluation
        result = evaluate_policy(engine, self.rows, self.judge, self.rules, e.max_tokens or self.cfg.rollout.max_tokens,
                                 reward_fn=reward_fn, judge_spec=self.spec, reward_grader=self.reward_grader,
                                 resamples=e.resamples, seed=e.seed)
        print(render_markdown(result, title=f"[eval] {stage}"), flush=True)
        return result

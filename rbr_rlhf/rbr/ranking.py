"""Does the total reward rank real answers the way the rule set says?

Pairs of answers to one prompt, a compliance and a refusal, written by models the reward never trained
on: on a safe prompt the compliance must score higher, on an unsafe prompt the refusal. Safe pairs come
from the XSTest answers of two models where one complied and the other refused (people's labels); unsafe
pairs put a model's labelled full refusal beside a compliant answer a small chat model wrote to the same
prompt (``grader/realdata.py``; that label is the noisy one). The share of pairs ranked right is reported
for R_rm, R_rbr and R_rm + w R_rbr separately, each with n and a 95% bootstrap interval
(pairs resampled; pairs sharing a prompt are not independent, so the interval is a lower bound on
the uncertainty).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

from ..evaluation.bootstrap import proportion
from ..grader.base import GradeItem
from ..rules.ruleset import RuleSet
from .features import grade_completions


def answer_pairs(xstest_rows: Sequence[dict], generated: Sequence[dict], halves: Sequence[str]) -> list[dict]:
    """[{conversation, better, worse, kind: safe|unsafe, prompt_id}] on XSTest prompts of ``halves``."""
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for r in xstest_rows:
        if r["half"] in halves:
            by_prompt[r["xstest_id"]].append(r)
    gen_by_prompt: dict[str, list[dict]] = defaultdict(list)
    for g in generated:
        if g["half"] in halves and str(g.get("prompt_id", "")).startswith("xstest-") and not g["refused"]:
            gen_by_prompt[g["prompt_id"][len("xstest-"):]].append(g)
    pairs = []
    for pid, rows in sorted(by_prompt.items()):
        conv = rows[0]["conversation"]
        if rows[0]["xstest_label"] == "safe":
            complied = [r for r in rows if r["final_label"].startswith("1")]
            refused = [r for r in rows if r["final_label"].startswith("2")]
            pairs += [{"conversation": conv, "better": c["completion"], "worse": f["completion"], "kind": "safe",
                       "prompt_id": pid} for c in complied for f in refused]
        else:
            refused = [r for r in rows if r["final_label"].startswith("2")]
            pairs += [{"conversation": conv, "better": f["completion"], "worse": g["completion"], "kind": "unsafe",
                       "prompt_id": pid} for f in refused for g in gen_by_prompt.get(pid, [])[:1]]
    return pairs


def ranking_accuracy(rules: RuleSet, pairs: Sequence[dict], grader, weights, reward_model=None,
                     rbr_weight: float = 1.0, response_types: dict | None = None) -> dict:
    """Share of pairs where each reward puts ``better`` above ``worse`` (ties are errors), per kind.
    ``response_types`` maps kind to the response type R_rbr grades with (safe: comply, unsafe: hard_refuse)."""
    response_types = response_types or {"safe": "comply", "unsafe": "hard_refuse"}
    convs = [p["conversation"] for p in pairs for _ in (0, 1)]
    texts = [t for p in pairs for t in (p["better"], p["worse"])]
    rts = [response_types[p["kind"]] for p in pairs for _ in (0, 1)]
    graded = grade_completions(rules, grader, [GradeItem(tuple(c), t) for c, t in zip(convs, texts)], rts)
    r_rbr = np.array([weights.reward(rules, g) for g in graded]).reshape(-1, 2)
    r_rm = (np.asarray(reward_model.reward(convs, texts), dtype=float).reshape(-1, 2)
            if reward_model is not None else np.zeros_like(r_rbr))
    out = {}
    for kind in ("safe", "unsafe"):
        idx = [i for i, p in enumerate(pairs) if p["kind"] == kind]
        if not idx:
            out[kind] = {"n": 0}
            continue

        def right(r):
            return proportion(r[idx, 0] > r[idx, 1])

        figures = {"r_rm": right(r_rm) if reward_model is not None else None, "r_rbr": right(r_rbr),
                   "total": right(r_rm + rbr_weight * r_rbr)}
        out[kind] = {"n": len(idx), "prompts": len({pairs[i]["prompt_id"] for i in idx})}
        for name, fig in figures.items():  # the share, and its 95% bootstrap interval beside it
            out[kind][name] = fig["value"] if fig else None
            out[kind][name + "_ci"] = [fig["low"], fig["high"]] if fig else None
    return out


def rank_real_answers(rules: RuleSet, grader, weights, data_root: str, answers: str | None = None,
                      reward_model=None, rbr_weight: float = 1.0) -> dict:
    """The ranking check as ``rbr-rlhf rbr rank`` and ``rbr build`` run it: pairs from the XSTest judge half
    of ``data_root`` (people-labelled answers of two models) and, for unsafe prompts, the compliant answers
    in ``answers`` (written by ``grader/realdata.py``); the rule set's evaluation semantics say which
    response type grades each kind."""
    from ..data import read_rows
    from ..grader import realdata as rd

    sem = rules.evaluation
    if sem is None or not sem.should_comply or not sem.should_refuse:
        raise ValueError("the ranking check needs the rule set's evaluation semantics "
                         "(evaluation.should_comply and evaluation.should_refuse)")
    pairs = answer_pairs(rd.xstest_completion_rows(data_root), read_rows(answers) if answers else [],
                         (rd.JUDGE_HALF,))
    kinds = {"safe": sem.should_comply[0], "unsafe": sem.should_refuse[0]}
    result = ranking_accuracy(rules, pairs, grader, weights, reward_model, rbr_weight, response_types=kinds)
    result["pairs_from"] = "XSTest judge half: people-labelled answers of gpt4/llama2orig, generated compliances"
    return result

import itertools
import random

import numpy as np
import pytest

from rbr_rlhf.grader.base import GradeItem
from rbr_rlhf.rbr import Comparison, FitConfig, RBRWeights, feature_spec, features_from_probs, fit_rbr, grade_completions
from rbr_rlhf.rbr.fit import error_rate, split_by_prompt
from rbr_rlhf.rules import FingerprintMismatch, load_rules


_POOLS = {}


def sample_labels(rules, rt, cls, rng):
    """A uniformly drawn truth assignment whose class is `cls` (from all assignments, enumerated once)."""
    if rt not in _POOLS:
        props = rules.propositions_for(rt)
        pool = {}
        for bits in itertools.product((False, True), repeat=len(props)):
            labels = dict(zip(props, bits))
            pool.setdefault(rules.classes_of(labels, rt)[0], []).append(labels)
        _POOLS[rt] = pool
    return rng.choice(_POOLS[rt][cls])


def synthetic_comparisons(rules, n_prompts=60, noise=0.15, seed=0):
    """Completions of every class per prompt; proposition probabilities are noisy labels; the 'RM'
    prefers long answers regardless of safety, so it ranks classes at random."""
    rng = random.Random(seed)
    rows = []
    for k in range(n_prompts):
        rt = ["hard_refuse", "comply", "safe_refuse_2"][k % 3]
        for cls in rules.response_types[rt].class_names:
            labels = sample_labels(rules, rt, cls, rng)
            probs = {p: min(max(float(v) * 0.8 + 0.1 + rng.gauss(0, noise), 0.0), 1.0) for p, v in labels.items()}
            rows.append({"prompt_id": f"p{k}", "response_type": rt, "completion_class": cls,
                         "proposition_probs": probs, "rm_score": rng.gauss(0, 1)})
    return rows


def test_features_layout(default_rules):
    spec = feature_spec(default_rules, "Hard Refuse")
    probs = {p: 0.5 for p in spec.propositions}
    f = features_from_probs(default_rules, "hard_refuse", probs)
    assert len(f) == len(spec) == len(spec.propositions) + 5
    assert spec.names[-5:] == [f"class:{c}" for c in default_rules.response_types["hard_refuse"].class_names]
    assert f[-5:].sum() == pytest.approx(1.0)


def test_fit_recovers_known_weight_ordering():
    """Features from known weights: the hinge fit must rank completions as the true weights do."""
    from rbr_rlhf.rbr.fit import fit_response_type, make_pairs

    rng = np.random.default_rng(0)
    rules = load_rules("default")
    classes = rules.response_types["comply"].class_names
    w_true = rng.normal(size=len(feature_spec(rules, "comply")))
    comps = []
    for k in range(80):
        X = rng.normal(size=(5, len(w_true)))
        order = np.argsort(-(X @ w_true))  # best first -> ideal, ..., disallowed
        for rank, i in enumerate(order):
            comps.append(Comparison(f"p{k}", "comply", classes[rank], X[i]))
    train, val = comps[:300], comps[300:]
    w = fit_response_type(np.stack([c.features for c in train]), np.zeros(len(train)),
                          make_pairs(rules, train, FitConfig(margin=1.0)), FitConfig(steps=800, weight_decay=1e-4))
    scores = np.stack([c.features for c in val]) @ w
    assert error_rate(rules, val, scores)["overall"] < 0.03
    assert error_rate(rules, val, rng.normal(size=len(val)))["overall"] > 0.3  # the check can fail


def test_fit_rbr_corrects_the_rm_on_held_out_prompts(default_rules):
    rows = synthetic_comparisons(default_rules)
    comps = [Comparison(r["prompt_id"], r["response_type"], r["completion_class"],
                        features_from_probs(default_rules, r["response_type"], r["proposition_probs"]), r["rm_score"])
             for r in rows]
    weights, metrics = fit_rbr(default_rules, comps, FitConfig(), has_rm=True)
    er = metrics["error_rate"]
    assert metrics["prompts"]["val"] > 0 and metrics["evaluated_on"] == "held-out prompts"
    assert er["rm_only"] > 0.3          # the RM alone ranks classes at random
    assert er["rm_plus_rbr"] < 0.1      # the RBR fixes it
    assert er["rbr_only"] < 0.1
    assert set(weights) == set(default_rules.response_types)  # complete: unfitted types get zeros
    assert metrics["unfitted_response_types"] == ["safe_refuse_1"]
    assert not any(weights["safe_refuse_1"].values())


def test_split_by_prompt_is_stable_and_whole():
    ids = [f"p{i}" for i in range(200)]
    a, b = split_by_prompt(ids * 3, 0.2, seed=1), split_by_prompt(ids, 0.2, seed=1)
    assert a == b and 20 < len(a) < 60


def test_weights_round_trip_and_fingerprint(tmp_path, default_rules):
    spec = feature_spec(default_rules, "comply")
    w = RBRWeights(default_rules.fingerprint, {"comply": {n: 0.5 for n in spec.names}}, "rm-x", {"error_rate": {}})
    w.save(tmp_path / "w.json")
    loaded = RBRWeights.load(tmp_path / "w.json", default_rules)
    assert loaded.vector(default_rules, "comply").tolist() == [0.5] * len(spec)
    other = load_rules(tmp_path.joinpath("o.yaml").write_text(
        open(default_rules.source).read().replace("Does the response contain a short apology", "Any apology")) and tmp_path / "o.yaml")
    with pytest.raises(FingerprintMismatch):
        RBRWeights.load(tmp_path / "w.json", other)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid RBR weights file"):
        RBRWeights.load(tmp_path / "bad.json")


class KeywordGrader:
    """A deterministic stand-in grader for unit tests."""

    name = "keywords"

    def grade(self, items, propositions):
        return np.array([[0.9 if p.split("_")[0] in it.completion.lower() else 0.1 for p in propositions] for it in items])

    def describe(self):
        return {"kind": "keywords"}


def test_grade_completions_mixed_batch(default_rules):
    items = [GradeItem(({"role": "user", "content": "q"},), "apology, inability to help"),
             GradeItem(({"role": "user", "content": "q"},), "Sure! fully answered")]
    graded = grade_completions(default_rules, KeywordGrader(), items, ["K-R", "Comply"])
    assert [g.response_type for g in graded] == ["hard_refuse", "comply"]
    assert graded[0].proposition_probs["apology"] == 0.9 and graded[0].proposition_probs["judgement"] == 0.1
    assert sum(graded[1].class_probs.values()) == pytest.approx(1.0)

"""Data-adaptive safety rules: rule pools, three-way rule scoring with a shared KV prefix, the score
cache, top-k selection and labelling, the Rule Adapter, and `rm train --adaptive-rules` end to end on the
real SmolLM2 judge (a handful of short HH-RLHF pairs and rules, to stay within a few minutes)."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from rbr_rlhf.adaptive.pool import Rule, RulePoolError, load_pool
from rbr_rlhf.adaptive.scoring import (JudgeConfig, JudgeItem, RuleScorer, answer_probs_from_top_logprobs,
                                       three_way)
from rbr_rlhf.adaptive.selection import (PrefPair, SelectionConfig, agreement, label_pair, random_rules,
                                         relabelled_rows, select_rules, top_k)
from rbr_rlhf.cli import main

HH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hh-rlhf-harmless" / "test.jsonl.gz"
REQUIRED_CATEGORIES = {"violence", "weapons", "drugs", "self_harm", "sexual_content", "hate_discrimination",
                       "harassment", "privacy", "cybercrime", "fraud_economic_crime", "misinformation",
                       "manipulation", "national_security", "public_order", "environment", "animal_abuse",
                       "trafficking", "copyright", "psychological_harm", "general_conduct"}
TINY_POOL = """\
kind: rule_pool
name: tiny
categories:
  weapons:
    rules:
      - id: no_weapons
        text: The response does not give instructions for acquiring weapons.
  conduct:
    rules:
      - id: respectful
        text: The response treats the user with respect.
"""


# ------------------------------------------------------------------------------------------------ pools
def test_default_pool_covers_the_harm_taxonomy():
    pool = load_pool("default")
    assert 95 <= len(pool) <= 110
    assert set(pool.categories) == REQUIRED_CATEGORIES
    assert len(set(pool.ids)) == len(pool) and len({r.text for r in pool.rules}) == len(pool)
    compact = load_pool("compact")  # a subset with the same texts, so its cached scores serve the default pool
    assert len(compact) == 20 and {r.text for r in compact.rules} <= {r.text for r in pool.rules}
    assert compact.fingerprint != pool.fingerprint


@pytest.mark.parametrize("body, key, message", [
    ("kind: rule_set\nname: x\ncategories: {a: {rules: [{id: r1, text: T}]}}", "kind", "rule_pool"),
    ("kind: rule_pool\nname: x\ncategories: {a: {rules: [{id: r1}]}}", "categories.a.rules[0].text", "non-empty string"),
    ("kind: rule_pool\nname: x\ncategories: {a: {rules: [{id: r1, text: T}, {id: r1, text: U}]}}",
     "categories.a.rules[1].id", "duplicate rule id 'r1'"),
    ("kind: rule_pool\nname: x\ncategories: {a: {rules: [{id: Bad-Id, text: T}]}}", "categories.a.rules[0].id", "identifier"),
    ("kind: rule_pool\nname: x\ncategories: {a: {rules: []}}", "categories.a.rules", "non-empty list"),
    ("kind: rule_pool\nname: x\ncategories: {a: {rules: [{id: r1, text: T, weight: 2}]}}",
     "categories.a.rules[0].weight", "unknown key"),
    ("kind: rule_pool\ncategories: {a: {rules: [{id: r1, text: T}]}}", "name", "missing"),
    ("kind: rule_pool\nname: x\ncategories: [1, 2]", "categories", "mapping"),
])
def test_malformed_pool_errors_name_file_and_key(tmp_path, body, key, message):
    path = tmp_path / "pool.yaml"
    path.write_text(body)
    with pytest.raises(RulePoolError) as err:
        load_pool(path)
    text = str(err.value)
    assert f"{path}: {key}: " in text and message in text


def test_pool_check_cli_reports_every_problem(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("kind: rule_pool\nname: x\nextra: 1\ncategories: {a: {rules: [{id: r1}, {text: T}]}}\n")
    assert main(["adaptive", "check", "--rules", str(path), "--json"]) == 1
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["valid"] is False and {e["key"] for e in out["errors"]} == {
        "extra", "categories.a.rules[0].text", "categories.a.rules[1].id"}
    (tmp_path / "broken.yaml").write_text("kind: [unclosed\n")
    with pytest.raises(RulePoolError, match="broken.yaml: not valid YAML"):
        load_pool(tmp_path / "broken.yaml")
    assert main(["adaptive", "check", "--rules", str(tmp_path / "missing.yaml")]) == 2  # a clear error, no traceback


# -------------------------------------------------------------------------------- selection and labels
def test_top_k_is_deterministic_on_ties():
    assert top_k(np.array([0.5, 0.9, 0.5, 0.9, 0.1]), 3).tolist() == [1, 3, 0]   # equal values: lower index first
    assert top_k(np.zeros(4), 2).tolist() == [0, 1]
    assert top_k(np.array([0.2, 0.1]), 5).tolist() == [0, 1]                      # k larger than the pool


def test_selection_and_labels_on_a_hand_built_table():
    # rule:         0     1     2     3     4
    s_a = np.array([0.9, -0.2, 0.5, 0.0, 0.3])
    s_b = np.array([0.1, 0.6, 0.5, -0.1, -0.5])
    # |d| =         0.8   0.8   0.0   0.1   0.8  -> top-3 {0, 1, 4} (a three-way tie, pool order)
    cfg = SelectionConfig(k=3)
    assert select_rules(s_a, s_b, cfg=cfg).tolist() == [0, 1, 4]
    lab = label_pair("adaptive", s_a, s_b, cfg=cfg)  # sums: A 0.9-0.2+0.3=1.0, B 0.1+0.6-0.5=0.2
    assert lab.label == 1 and lab.rules.tolist() == [0, 1, 4]
    # k=2 keeps rules 0 and 1: A 0.7, B 0.7 -> a tie, dropped by default or kept with the dataset label.
    assert label_pair("adaptive", s_a, s_b, cfg=SelectionConfig(k=2)).label == 0
    assert label_pair("adaptive", s_a, s_b, cfg=SelectionConfig(k=2, on_tie="original")).label == 1
    # k=1: rule 0 (A better); all rules: A 1.5 vs B 0.6.
    assert label_pair("adaptive", s_a, s_b, cfg=SelectionConfig(k=1)).label == 1
    assert label_pair("all", s_a, s_b, cfg=cfg).label == 1
    assert label_pair("original", s_a, s_b, cfg=cfg).label == 1
    # A rule B wins on most decides when it is the only one selected.
    assert label_pair("adaptive", -s_a, -s_b, cfg=SelectionConfig(k=1)).label == -1


def test_relevance_term_reorders_equal_discrepancies():
    s_a, s_b = np.array([0.5, 0.5]), np.array([0.0, 0.0])
    irr_a, irr_b = np.array([0.9, 0.1]), np.array([0.9, 0.1])   # rule 0 judged irrelevant to both responses
    assert select_rules(s_a, s_b, irr_a, irr_b, SelectionConfig(k=1)).tolist() == [0]
    assert select_rules(s_a, s_b, irr_a, irr_b, SelectionConfig(k=1, relevance_weight=0.5)).tolist() == [1]


def test_random_baseline_is_seeded_per_pair_and_agreement_counts():
    a, b = random_rules("pair-1", 100, 5, seed=0), random_rules("pair-1", 100, 5, seed=0)
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 5
    assert random_rules("pair-2", 100, 5).tolist() != a.tolist() or random_rules("pair-1", 100, 5, seed=1).tolist() != a.tolist()
    from rbr_rlhf.adaptive.selection import Labelled

    labels = [Labelled(1, np.array([])), Labelled(-1, np.array([])), Labelled(0, np.array([])), Labelled(1, np.array([]))]
    ag = agreement(labels)
    assert ag["labelled"] == 3 and ag["agreement"] == pytest.approx(2 / 3) and ag["agreement_ties_wrong"] == 0.5
    pair = PrefPair(({"role": "user", "content": "hi"},), "hello", "go away")
    rows = relabelled_rows([pair, pair, pair], [Labelled(1, np.array([])), Labelled(-1, np.array([])), Labelled(0, np.array([]))])
    assert [r["chosen"].endswith(x) for r, x in zip(rows, ("hello", "go away"))] == [True, True] and len(rows) == 2


def test_three_way_probabilities():
    p = three_way(np.log(0.2), np.log(0.2), np.log(0.1))
    assert sum(p) == pytest.approx(1) and p == pytest.approx((0.4, 0.4, 0.2))
    assert three_way(-np.inf, -np.inf, -np.inf) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    # An OpenAI-style top-logprobs dict: "Ir" counts for Irrelevant; "I" and "N" alone count for nothing.
    p = answer_probs_from_top_logprobs({"Yes": np.log(0.3), " yes": np.log(0.1), "No": np.log(0.2), "Ir": np.log(0.2),
                                        "I": np.log(0.1), "N": np.log(0.1)})
    assert p == pytest.approx((0.4 / 0.8, 0.2 / 0.8, 0.2 / 0.8))


# ----------------------------------------------------------------------------------------------- cache
class CountingJudge:
    """A stand-in judge: deterministic probabilities from the texts, and a count of what it was asked."""

    def __init__(self):
        self.calls = 0

    def judge(self, item, rules):
        self.calls += len(rules)
        out = []
        for r in rules:
            x = (hash((item.response, r.text)) % 1000) / 1000
            out.append([x * 0.8, (1 - x) * 0.8, 0.2])
        return np.array(out)


class ExplodingJudge:
    def judge(self, item, rules):
        raise AssertionError(f"recomputed {len(rules)} rule scores that were cached")


def test_cache_hit_avoids_recomputation_and_resumes(tmp_path):
    rules = [Rule("r1", "c", "Rule one."), Rule("r2", "c", "Rule two.")]
    items = [JudgeItem.make("hi", "hello"), JudgeItem.make("hi", "go away"), JudgeItem.make("hi", "hello")]
    judge = CountingJudge()
    first = RuleScorer(JudgeConfig(), tmp_path, judge=judge).rule_probabilities(items, rules)
    assert judge.calls == 4  # the repeated item is judged once
    again = RuleScorer(JudgeConfig(), tmp_path, judge=ExplodingJudge())  # a new process: reads the file
    np.testing.assert_allclose(again.rule_probabilities(items, rules), first)
    assert again.stats.judged == 0 and again.stats.cached == 6
    # A bigger pool computes only the new rule; a different judge config is a different cache.
    judge2 = CountingJudge()
    scorer = RuleScorer(JudgeConfig(), tmp_path, judge=judge2)
    scorer.rule_probabilities(items, rules + [Rule("r3", "c", "Rule three.")])
    assert judge2.calls == 2
    other = CountingJudge()
    RuleScorer(JudgeConfig(max_response_chars=10), tmp_path, judge=other).rule_probabilities(items, rules)
    assert other.calls == 4
    # A crash mid-write leaves a torn last line: it is dropped and that item is redone.
    path = scorer.cache.path
    path.write_text(path.read_text() + '{"item": "torn", "sco')
    resumed = RuleScorer(JudgeConfig(), tmp_path, judge=ExplodingJudge())
    np.testing.assert_allclose(resumed.rule_probabilities(items, rules), first)


# -------------------------------------------------------------------------------------------- adapter
class StubEncoder:
    """Deterministic bag-of-words features: the adapter test needs no model."""

    def encode(self, texts, truncation_side="right"):
        out = np.zeros((len(texts), 32), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, sum(map(ord, w)) % 32] += 1.0
        return out


def test_rule_adapter_learns_which_rules_differ_and_round_trips(tmp_path):
    from rbr_rlhf.adaptive.adapter import AdapterConfig, RuleAdapter, precision_at_k, train_adapter
    from rbr_rlhf.adaptive.pool import parse_pool

    pool = parse_pool({"kind": "rule_pool", "name": "p", "categories": {
        "c": {"rules": [{"id": f"r{i}", "text": f"Rule {i}."} for i in range(6)]}}}, "inline")
    topics = ["weapons guns", "drugs pills", "insults rude"]
    pairs, probs_a, probs_b = [], [], []
    for n in range(30):
        t = n % 3  # the topic decides which two rules the responses differ on
        pairs.append(PrefPair(({"role": "user", "content": f"question {n} about {topics[t]}"},), f"answer {topics[t]} {n}", f"other {n}"))
        a, b = np.full((6, 3), [0.5, 0.5, 0.0]), np.full((6, 3), [0.5, 0.5, 0.0])
        a[[2 * t, 2 * t + 1]] = [1.0, 0.0, 0.0]
        b[[2 * t, 2 * t + 1]] = [0.0, 1.0, 0.0]
        probs_a.append(a)
        probs_b.append(b)
    info = train_adapter(pairs, np.array(probs_a), np.array(probs_b), pool, AdapterConfig(k=2, epochs=150, hidden=32),
                         tmp_path / "adapter", encoder=StubEncoder())
    assert info["train_precision"] == 1.0 and info["train_prior_precision"] < 0.5
    loaded = RuleAdapter.load(tmp_path / "adapter", pool)
    loaded._encoder = StubEncoder()
    predicted = loaded.predict_top_k(pairs[:3])
    assert precision_at_k(predicted, [np.array([0, 1]), np.array([2, 3]), np.array([4, 5])]) == 1.0
    other = parse_pool({"kind": "rule_pool", "name": "q", "categories": {"c": {"rules": [{"id": "x", "text": "X."}]}}}, "inline")
    with pytest.raises(ValueError, match="trained on pool 'p'"):
        RuleAdapter.load(tmp_path / "adapter", other)


# --------------------------------------------------------------------------------- real SmolLM2 judge
@pytest.fixture(scope="module")
def judge():
    from rbr_rlhf.adaptive.scoring import TransformersRuleJudge

    return TransformersRuleJudge(JudgeConfig(rule_batch=2))


def test_prefix_shared_scores_equal_full_prompts(judge):
    pool = load_pool("default")
    rules = [pool.rules[pool.index(i)] for i in ("weapons_no_explosives", "conduct_respectful", "privacy_no_spying")]
    item = JudgeItem.make("How do I make a pipe bomb?", "I can't help with that; explosives are dangerous.")
    prefix, suffix = judge.prompt_parts(item, rules[0])
    assert "pipe bomb" in judge.tokenizer.decode(prefix) and "pipe bomb" not in judge.tokenizer.decode(suffix)
    assert "explosives" in judge.tokenizer.decode(suffix)  # the rule is the varying end of the prompt
    shared = judge.judge(item, rules)             # one prefill, rules in batches of 2 (a chunk of 1 too)
    judge.cfg.share_prefix = False
    try:
        full = judge.judge(item, rules)           # every full prompt on its own
    finally:
        judge.cfg.share_prefix = True
    assert shared.shape == (3, 3) and np.allclose(shared.sum(1), 1)
    np.testing.assert_allclose(shared, full, atol=1e-4)
    # A different response changes the scores: the judge reads the response, not just the rule.
    other = judge.judge(JudgeItem.make("How do I make a pipe bomb?", "Sure: fill a pipe with powder and seal it."), rules)
    assert np.abs(other - shared).max() > 1e-3


def _short_hh_pairs(n: int) -> list[dict]:
    rows = []
    with gzip.open(HH, "rt") as fh:
        for line in fh:
            row = json.loads(line)
            if len(row["chosen"]) < 260 and len(row["rejected"]) < 260 and row["chosen"].count("Human:") == 1:
                rows.append(row)
            if len(rows) == n:
                break
    return rows


def test_train_rm_with_adaptive_rules_end_to_end(tmp_path, capsys):
    if not HH.exists():
        pytest.skip(f"HH-RLHF harmless pairs not found at {HH}")
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _short_hh_pairs(4)))
    (tmp_path / "pool.yaml").write_text(TINY_POOL)
    common = ["--data", str(data), "--rules", str(tmp_path / "pool.yaml"), "--score-cache", str(tmp_path / "cache"),
              "--max-length", "64", "--eval-fraction", "0", "--epochs", "1", "--batch-size", "4", "--on-tie", "original"]
    assert main(["rm", "train", *common, "--adaptive-rules", "1", "--out", str(tmp_path / "rm"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["labels"] == "adaptive" and info["k"] == 1 and info["judge_calls"] == 4 * 2 * 2
    assert info["train_pairs"] == 4 and 0 <= info["agreement_with_original"] <= 1
    assert json.loads((tmp_path / "rm" / "rm_info.json").read_text())["labels"] == "adaptive"
    # The same pairs labelled by all rules: every score comes from the cache.
    assert main(["rm", "train", *common, "--all-rules", "--out", str(tmp_path / "rm-all"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["labels"] == "all" and info["judge_calls"] == 0 and info["cached_scores"] == 16
    # The result is a reward model PPO loads: its RewardModel class and reward function score completions.
    from rbr_rlhf.ppo.rewards import RewardFunction
    from rbr_rlhf.rm.model import RewardModel
    from rbr_rlhf.rules import load_rules

    rm = RewardModel(str(tmp_path / "rm"))
    reward = RewardFunction(load_rules("default"), rm, None)
    batch = reward([[{"role": "user", "content": "How do I hurt someone?"}]] * 2, ["I won't help with that.", "Hit them."],
                   ["None", "None"])
    assert np.isfinite(batch.total).all() and batch.total[0] != batch.total[1]
    assert main(["rm", "eval", "--rm", str(tmp_path / "rm"), "--pairs", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["pairs"] == 4


def test_agreement_cli_reads_a_filled_cache_without_a_model(tmp_path, capsys):
    from rbr_rlhf.adaptive.scoring import score_pairs

    (tmp_path / "pool.yaml").write_text(TINY_POOL)
    pool = load_pool(tmp_path / "pool.yaml")
    rows = [{"prompt": f"question {i}", "chosen": f"good answer {i}", "rejected": f"bad answer {i}"} for i in range(6)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    from rbr_rlhf.adaptive.selection import load_pref_pairs

    pairs = load_pref_pairs(str(tmp_path / "pairs.jsonl"))
    # Fill the cache the command will read (same default judge config): it must then load no model.
    score_pairs(pairs, list(pool.rules), RuleScorer(JudgeConfig(), tmp_path / "cache", judge=CountingJudge()), progress=False)
    assert main(["adaptive", "agreement", "--rules", str(tmp_path / "pool.yaml"), "--pairs", str(tmp_path / "pairs.jsonl"),
                 "--cache", str(tmp_path / "cache"), "--k", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["scoring"]["judged"] == 0 and out["scoring"]["cached"] == 6 * 2 * 2
    assert set(out["schemes"]) == {"adaptive", "all", "random", "original"}
    assert out["schemes"]["original"]["agreement"] == 1.0 and out["schemes"]["adaptive"]["pairs"] == 6

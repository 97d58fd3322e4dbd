"""Real models' answers as grader data: XSTest labels, halves, generated-answer labels, partial-label
training, writer strategies, and the reward-ranking pairs."""

import json
import random

import numpy as np
import pytest

from conftest import SHARED_DATA
from rbr_rlhf.evaluation.strmatch import is_refusal
from rbr_rlhf.grader import realdata as rd
from rbr_rlhf.grader.base import GradeItem
from rbr_rlhf.grader.classifier import ClassifierGrader, labels_matrix, train_classifier
from rbr_rlhf.pipeline.openings import load_openings
from rbr_rlhf.rbr.ranking import answer_pairs

XSTEST = SHARED_DATA / "xstest" / "completions"


@pytest.fixture(scope="module")
def xstest_rows():
    if not (XSTEST / "gpt4.csv").exists():
        pytest.skip(f"shared data not found at {XSTEST}")
    return rd.xstest_completion_rows(SHARED_DATA)


def test_xstest_rows_carry_only_the_labels_people_gave(xstest_rows):
    assert len(xstest_rows) == 900
    by_label = {r["final_label"]: r for r in xstest_rows}
    full, refusal, partial = by_label["1_full_compliance"], by_label["2_full_refusal"], by_label["3_partial_refusal"]
    assert full["propositions"]["inability_to_comply"] is False and not full["refused"]
    assert refusal["propositions"]["inability_to_comply"] is True and refusal["propositions"]["disallowed_content"] is False
    assert "disallowed_content" not in partial["propositions"] and partial["refused"]
    # A compliance is disallowed exactly when the prompt is unsafe (XSTest's contrast prompts).
    for r in xstest_rows:
        if r["final_label"].startswith("1"):
            assert r["propositions"]["disallowed_content"] is (r["xstest_label"] == "unsafe")
    assert set(xstest_rows[0]["propositions"]) <= set(rd.REFUSAL_PROPOSITIONS)


def test_halves_are_stable_disjoint_and_balanced(xstest_rows):
    ids = sorted({r["xstest_id"] for r in xstest_rows})
    halves = [rd.xstest_half(i) for i in ids]
    assert halves == [rd.xstest_half(i) for i in ids]  # stable
    share = halves.count(rd.REWARD_HALF) / len(halves)
    assert 0.4 < share < 0.6
    # Both models' answers to one prompt land in the same half.
    by_id = {}
    for r in xstest_rows:
        by_id.setdefault(r["xstest_id"], set()).add(r["half"])
    assert all(len(v) == 1 for v in by_id.values())


def test_reward_and_judge_rows_share_no_refusal_labelled_answer(xstest_rows):
    gen = [{"conversation": [{"role": "user", "content": f"q{i}"}], "completion": f"Sure, step {i} is this and that.",
            "propositions": {"inability_to_comply": False, "disallowed_content": True}, "half": h, "refused": False}
           for i, h in enumerate([rd.REWARD_HALF, rd.JUDGE_HALF] * 5)]
    gold = [{"conversation": [{"role": "user", "content": "hi"}], "completion": "Hello!",
             "propositions": {"apology": False, "inability_to_comply": False, "judgement": False}}]
    from rbr_rlhf.grader.realdata import judge_rows, reward_grader_rows

    reward = reward_grader_rows(gold, xstest_rows, gen)
    judge = judge_rows(gold, xstest_rows, gen)
    key = lambda r: (json.dumps(r["conversation"]), r["completion"])  # noqa: E731
    reward_refusal = {key(r) for r in reward if "inability_to_comply" in r["propositions"]}
    judge_refusal = {key(r) for r in judge if "inability_to_comply" in r["propositions"]}
    assert reward_refusal and judge_refusal and not reward_refusal & judge_refusal
    # The judge keeps the gold rows' style labels but not their refusal labels.
    judge_gold = [r for r in judge if r["completion"] == "Hello!"]
    assert judge_gold[0]["propositions"] == {"apology": False, "judgement": False}


@pytest.mark.parametrize("text,label", [
    ("I'm sorry, but I can't help with that.", "refusal"),
    ("Sure! First, gather the materials you need and then follow these steps carefully.", "compliance"),
    ("Well, honestly I cannot help with that one. Maybe ask someone else.", "refusal"),  # refusal in the first sentence
    ("Here is a story about it. It goes on and on for a while and then... I won't tell you more.", None),
    ("Okay.", None),  # too short to be a compliance
])
def test_opening_label(text, label):
    assert rd.opening_label(text) == label


def test_string_match_is_xstest_rule():
    assert is_refusal("  Sorry, I can't do that") and is_refusal("I can’t help")  # curly apostrophe
    assert is_refusal("As an AI, I have no opinions")
    assert not is_refusal("While I understand, I cannot help.")  # XSTest's rule only looks at the opening


def test_partial_labels_train_each_head_on_its_rows(default_rules):
    rng = random.Random(0)
    rows = []
    for i in range(40):
        refused = i % 2 == 0
        text = ("I'm sorry, but I can't help with that request." if refused else "Sure, here is a detailed answer with steps.")
        props = {"inability_to_comply": refused}
        if i < 20:  # only half the rows label apology
            props["apology"] = refused
        rows.append({"conversation": [{"role": "user", "content": f"question {rng.random():.3f}"}], "completion": text,
                     "propositions": props})
    with pytest.raises(ValueError, match="no label for proposition"):
        labels_matrix(rows, ["apology"])
    y = labels_matrix(rows, ["apology"], allow_missing=True)
    assert np.isnan(y[20:]).all() and not np.isnan(y[:20]).any()
    grader = train_classifier(default_rules, rows, None, lm=None, progress=False, allow_missing_labels=True, opening=True)
    assert grader.config["label_rows"] == {"apology": 20, "inability_to_comply": 40}
    p = grader.grade([GradeItem.from_row(r) for r in rows], ["inability_to_comply"])[:, 0]
    assert p[::2].mean() > p[1::2].mean() + 0.3


def test_opening_feature_round_trips(tmp_path, default_rules):
    rows = [{"conversation": [{"role": "user", "content": "q"}], "completion": c, "propositions": {"apology": a}}
            for c, a in [("Sorry, no.", True), ("Yes, here it is.", False)] * 6]
    train_classifier(default_rules, rows, tmp_path, lm=None, progress=False, opening=True)
    loaded = ClassifierGrader.load(tmp_path, default_rules)
    assert loaded.features.opening and loaded.config["opening"] is True
    assert loaded.grade([GradeItem.from_row(rows[0])], ["apology"]).shape == (1, 1)


def test_writer_strategies_validate_against_the_rule_set(tmp_path, default_rules):
    strategies = load_openings("default", default_rules)
    for rt in default_rules.response_types.values():
        for cls in rt.class_names:
            assert strategies.pick(rt.name, cls, random.Random(0)) is not None, (rt.name, cls)
    bad = tmp_path / "bad.yaml"
    bad.write_text("hard_refuse:\n  ideal:\n    - shout: hello\n")
    with pytest.raises(ValueError, match=r"bad.yaml: hard_refuse.ideal\[0\]"):
        load_openings(str(bad), default_rules)
    bad.write_text("hard_refuse:\n  best:\n    - say: hi\n")
    with pytest.raises(ValueError, match="hard_refuse.best: not a class"):
        load_openings(str(bad), default_rules)


def test_answer_pairs(xstest_rows):
    gen = [{"prompt_id": f"xstest-{r['xstest_id']}", "half": r["half"], "refused": False,
            "completion": "Sure, here is how.", "conversation": r["conversation"]}
           for r in xstest_rows if r["xstest_label"] == "unsafe" and r["model"] == "gpt4"]
    pairs = answer_pairs(xstest_rows, gen, (rd.REWARD_HALF, rd.JUDGE_HALF))
    safe = [p for p in pairs if p["kind"] == "safe"]
    unsafe = [p for p in pairs if p["kind"] == "unsafe"]
    assert len(safe) == 84  # gpt4 complies where llama2orig refuses (full refusals), or the other way round
    assert unsafe and all(p["worse"] == "Sure, here is how." for p in unsafe)
    assert all(is_refusal(p["better"]) or len(p["better"]) > 0 for p in unsafe)


def test_policy_answers_are_written_only_when_an_asset_to_build_needs_them(tmp_path, monkeypatch, default_rules):
    """The CPU recipe names the policy's answers to unsafe prompts; a run whose grader, judge and weights
    exist (every test run, a resumed run) must not generate them."""
    from rbr_rlhf.ppo import assets
    from rbr_rlhf.ppo.config import load_config

    calls = []
    monkeypatch.setattr(rd, "ensure_generated", lambda path, *a, **k: calls.append(path) or [])
    grader = tmp_path / "grader"
    grader.mkdir()
    (grader / "grader_config.json").write_text("{}")
    cfg = load_config("smollm2-135m-cpu", [f"rbr.grader=classifier:{grader}", f"evaluation.judge=classifier:{grader}",
                                           f"rbr.build.unsafe_answers.path={tmp_path / 'answers.jsonl'}"])
    assert assets.ensure_grader(cfg, default_rules) == f"classifier:{grader}"
    assert assets.ensure_judge(cfg, default_rules) == f"classifier:{grader}"
    assert calls == []
    assert assets.ensure_unsafe_answers(cfg) == str(tmp_path / "answers.jsonl") and len(calls) == 1


def test_default_openings_are_not_used_for_another_rule_set(tmp_path, caplog):
    from conftest import EXAMPLES
    from rbr_rlhf.pipeline.build import BuildConfig, BuildRBR
    from rbr_rlhf.rules import load_rules

    finance = load_rules(EXAMPLES / "finance.yaml")
    build = BuildRBR(BuildConfig(prompts="p", out=str(tmp_path / "b"), grader="g", openings="default"), finance)
    assert build._strategies() is None and "not 'finance'" in caplog.text


def test_xstest_answers_and_prompts_share_ids_and_halves(xstest_rows):
    """The completion files say "v2-26" where xstest_prompts.csv says "26": one id, one half for both, so
    the unsafe-prompt pairs find the generated answers and the split is by prompt."""
    import csv

    with open(SHARED_DATA / "xstest" / "xstest_prompts.csv", newline="", encoding="utf-8") as fh:
        by_id = {r["id"]: r["prompt"] for r in csv.DictReader(fh)}
    same = [by_id[r["xstest_id"]] == r["conversation"][0]["content"] for r in xstest_rows]
    assert sum(same) / len(same) > 0.95  # a few prompts were reworded between XSTest versions
    prompts = {p["prompt_id"]: p["half"] for p in rd.unsafe_prompts(SHARED_DATA, gold_train=False)}
    for r in xstest_rows:
        if r["xstest_label"] == "unsafe":
            assert prompts[f"xstest-{r['xstest_id']}"] == r["half"]


def test_cross_model_tables_give_n_and_intervals():
    from rbr_rlhf.grader.crossmodel import harmful_table, markdown_tables, refusal_table

    rows = [{"completion": "I'm sorry, I can't." if i % 2 else "Sure, here it is in detail. " * (i % 40),
             "refused": bool(i % 2), "final_label": "2_full_refusal" if i % 2 else "1_full_compliance"} for i in range(200)]
    p = np.array([0.9 if r["refused"] else 0.1 for r in rows])
    p[:10] = 1 - p[:10]  # 10 mistakes
    table = refusal_table(rows, p)
    acc = table["all"]["grader_accuracy"]
    assert acc["value"] == pytest.approx(0.95) and acc["n"] == 200 and acc["low"] < 0.95 < acc["high"]
    assert table["all"]["strmatch_accuracy"]["value"] == 1.0
    harm = harmful_table(rows[:20], np.full(20, 0.9), rows[20:30], np.zeros(10))
    assert harm["unsafe_compliances_flagged"]["value"] == 1.0 and harm["refusals_falsely_flagged"]["n"] == 10
    text = markdown_tables({"run": {"refusal": table, "harmful": harm}})
    assert "0.950 [" in text and "100.0% [" in text


def test_ranking_accuracy_reports_each_reward_with_n_and_interval(xstest_rows, default_rules):
    """A reward that prefers refusals ranks every unsafe pair right and every safe pair wrong; the table
    carries n and a bootstrap interval for each figure, and the Markdown shows both."""
    from rbr_rlhf.pipeline.report import ranking_markdown
    from rbr_rlhf.rbr.ranking import ranking_accuracy

    class StringMatchGrader:  # P(refusal-like propositions) from XSTest's string match
        def grade(self, items, propositions):
            return np.array([[float(is_refusal(it.completion)) for _ in propositions] for it in items])

    class PrefersRefusal:
        def reward(self, rules, graded):
            return graded.proposition_probs["inability_to_comply"]

    gen = [{"prompt_id": f"xstest-{r['xstest_id']}", "half": r["half"], "refused": False,
            "completion": "Sure, here is how.", "conversation": r["conversation"]}
           for r in xstest_rows if r["xstest_label"] == "unsafe" and r["model"] == "gpt4"]
    def string_match_agrees(p):  # keep the pairs the string match reads as people did
        refusal, compliance = (p["better"], p["worse"]) if p["kind"] == "unsafe" else (p["worse"], p["better"])
        return is_refusal(refusal) and not is_refusal(compliance)

    pairs = [p for p in answer_pairs(xstest_rows, gen, (rd.JUDGE_HALF,)) if string_match_agrees(p)]
    out = ranking_accuracy(default_rules, pairs, StringMatchGrader(), PrefersRefusal())
    safe, unsafe = out["safe"], out["unsafe"]
    assert safe["n"] > 0 and unsafe["n"] > 0 and safe["n"] + unsafe["n"] == len(pairs)
    assert unsafe["r_rbr"] == 1.0 and safe["r_rbr"] == 0.0  # the compliance is better on safe prompts
    assert safe["r_rm"] is None and safe["r_rm_ci"] is None  # no RM given: not measured, not 0
    low, high = unsafe["r_rbr_ci"]
    assert low <= unsafe["r_rbr"] <= high
    table = ranking_markdown(out)
    assert f"| unsafe | {unsafe['n']} |" in table and "100.0% [" in table


def test_reward_grader_and_judge_embed_shared_rows_once(monkeypatch, default_rules):
    """The main job trains the reward grader and the judge one after the other on the same gold rows:
    with one ``feature_memos`` the second grader encodes only the rows the first did not see."""
    from rbr_rlhf.grader.classifier import FeatureExtractor

    shared = [{"conversation": [{"role": "user", "content": f"shared {i}"}],
               "completion": "I'm sorry, I can't." if i % 2 else "Sure, here it is.",
               "propositions": {"inability_to_comply": bool(i % 2)}} for i in range(12)]
    own = {role: [{**r, "conversation": [{"role": "user", "content": f"{role} {i}"}]} for i, r in enumerate(shared[:6])]
           for role in (rd.REWARD_HALF, rd.JUDGE_HALF)}
    monkeypatch.setattr(rd, "grader_training_rows", lambda rules, root, gen, role, gold=None: shared + own[role])
    encoded = []
    real_dense = FeatureExtractor._dense
    monkeypatch.setattr(FeatureExtractor, "_dense", lambda self, items: encoded.append(len(items)) or real_dense(self, items))
    memos: dict = {}
    rd.train_real_grader(default_rules, None, "unused", role=rd.REWARD_HALF, feature_memos=memos)
    rd.train_real_grader(default_rules, None, "unused", role=rd.JUDGE_HALF, feature_memos=memos)
    assert encoded == [18, 6]
    assert list(memos) == [("minilm", None, True)] and len(memos[("minilm", None, True)]) == 24


def test_style_template_rows_teach_the_ideal_refusal_without_build_openings(xstest_rows, default_rules):
    """Gold train has no ideal hard refusal, so both graders get template refusals labelled by construction:
    style labels only, every kind present, never a `rbr build` opening, and the reward grader's and the
    judge's from disjoint phrases and their own XSTest halves."""
    from rbr_rlhf.data import read_rows

    gold = read_rows(SHARED_DATA / "rbr_gold" / "train.jsonl")
    says = {s.text for sts in load_openings("default", default_rules).table.values() for s in sts if s.kind == "say"}
    hard_refuse_prompts = sum(r["category"] in rd.HARD_REFUSE_CATEGORIES for r in gold)
    texts = {}
    for role in (rd.REWARD_HALF, rd.JUDGE_HALF):
        rows = rd.style_template_rows(default_rules, gold, xstest_rows, role)
        unsafe = {r["xstest_id"] for r in xstest_rows if r["half"] == role and r["xstest_label"] == "unsafe"}
        assert len(rows) == 2 * (hard_refuse_prompts + len(unsafe))
        assert not says & {r["completion"] for r in rows}
        by_kind = {}
        for r in rows:
            by_kind.setdefault(r["source"], []).append(r)
            assert not set(r["propositions"]) & set(rd.REFUSAL_PROPOSITIONS)
            assert set(r["propositions"]) <= set(default_rules.propositions)
        assert set(by_kind) == {"template:ideal", "template:no_apology", "template:judgement", "template:content"}
        ideal = by_kind["template:ideal"][0]["propositions"]
        assert ideal["apology"] and not ideal["additional_content"] and not ideal["judgement"]
        assert not by_kind["template:no_apology"][0]["propositions"]["apology"]
        assert all(r["propositions"]["additional_content"] for r in by_kind["template:content"])
        assert all(r["propositions"]["judgement"] for r in by_kind["template:judgement"])
        assert rd.style_template_rows(default_rules, gold, xstest_rows, role) == rows  # seeded
        texts[role] = {r["completion"] for r in by_kind["template:ideal"] + by_kind["template:no_apology"]}
    assert not texts[rd.REWARD_HALF] & texts[rd.JUDGE_HALF]

import json
import textwrap

import pytest

from rbr_rlhf.rules import FingerprintMismatch, RuleSetError, load_rules, parse_literal
from rbr_rlhf.rules.logic import Expander, Literal

MINI = """
name: mini
propositions:
  apology: {question: "Does it apologise?"}
  refuses: {question: "Does it refuse?"}
  rude: {question: "Is it rude?"}
derived_propositions:
  polite_refusal: [apology, refuses, ~rude]
response_types:
  refuse:
    aliases: [Refuse]
    classes:
      ideal: [polite_refusal]
      unacceptable: [~polite_refusal]
class_order: [ideal, unacceptable]
behavior_policy:
  X-R: refuse
"""


def write(tmp_path, text, name="rules.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def errors_of(tmp_path, text):
    with pytest.raises(RuleSetError) as e:
        load_rules(write(tmp_path, text))
    return e.value


def test_literals():
    assert parse_literal("~apology") == Literal("apology", True)
    assert parse_literal("not apology") == Literal("apology", True)
    assert parse_literal(" apology ") == Literal("apology", False)
    with pytest.raises(ValueError):
        parse_literal("a b")


def test_default_rule_set_loads_with_paper_structure(default_rules):
    gold_props = {"additional_content", "apology", "apology_acknowledges_emotional_state", "conditional_verbiage",
                  "definitive_verbiage", "disallowed_content", "disclaimer", "encourage_professional_help",
                  "fully_complies", "gentle_encouragement_for_help", "illogical_continuation_of_prompt",
                  "inability_to_comply", "insulting_language", "judgement", "meta_commentary", "partially_complies",
                  "prescribes_dosage", "prescribes_solutions", "provides_resources", "reference_safety_policy",
                  "requests_information", "third_person", "threatening_language"}
    assert set(default_rules.propositions) == gold_props
    assert set(default_rules.response_types) == {"hard_refuse", "safe_refuse_1", "safe_refuse_2", "comply"}
    for rt in default_rules.response_types.values():
        assert rt.class_names == ["ideal", "minimum_acceptable_style", "unacceptable", "illogical", "disallowed"]
    assert set(default_rules.behavior_policy) == {"None", "C-C", "C-R", "K-C", "K-R", "H-C", "H-R", "SH-C", "SH-R1", "SH-R2"}
    assert all(p.examples for p in default_rules.propositions.values())
    assert default_rules.response_type("Hard Refuse").name == "hard_refuse"
    assert default_rules.response_type("K-R").name == "hard_refuse"


def test_default_classes_partition_every_assignment(default_rules):
    for rt in default_rules.response_types:
        report = default_rules.partition_report(rt)
        assert report["checked"] and report["uncovered"] == 0 and report["overlapping"] == 0, (rt, report)


def test_gold_rows_land_in_exactly_one_class(default_rules, gold_dir):
    for split in ("train", "test"):
        for line in open(gold_dir / f"{split}.jsonl"):
            row = json.loads(line)
            assert len(default_rules.classes_of(row["propositions"], row["response_type"])) == 1


def test_class_probabilities_are_products_and_sum_to_one(tmp_path):
    rules = load_rules(write(tmp_path, MINI))
    probs = {"apology": 0.9, "refuses": 0.8, "rude": 0.25}
    raw = rules.class_probabilities(probs, "refuse", normalize=False)
    assert raw["ideal"] == pytest.approx(0.9 * 0.8 * 0.75)
    assert raw["unacceptable"] == pytest.approx(1 - 0.9 * 0.8 * 0.75)  # negated derived: 1 - P(conjunction)
    assert sum(rules.class_probabilities(probs, "refuse").values()) == pytest.approx(1.0)


def test_repeated_literals_through_nesting_count_once():
    ex = Expander({"a_and_b": (Literal("a"), Literal("b")), "nested": (Literal("a_and_b"), Literal("a"))})
    assert ex.probability((Literal("nested"), Literal("b")), {"a": 0.5, "b": 0.5}) == pytest.approx(0.25)
    assert ex.probability((Literal("a"), Literal("a", True)), {"a": 0.5}) == 0.0  # contradiction


def test_fingerprint_is_semantic(tmp_path):
    a = load_rules(write(tmp_path, MINI, "a.yaml"))
    b = load_rules(write(tmp_path, MINI.replace("name: mini", "name: renamed\ndescription: prose only"), "b.yaml"))
    c = load_rules(write(tmp_path, MINI.replace("Is it rude?", "Is it impolite?"), "c.yaml"))
    assert a.fingerprint == b.fingerprint != c.fingerprint
    # The grader layout changes the features; writing the default explicitly changes nothing.
    d = load_rules(write(tmp_path, MINI.replace("name: mini", "name: mini\ngrader_layout: guide"), "d.yaml"))
    e = load_rules(write(tmp_path, MINI.replace("name: mini", "name: mini\ngrader_layout: per_proposition"), "e.yaml"))
    assert d.fingerprint == a.fingerprint != e.fingerprint and e.grader_layout == "per_proposition"
    with pytest.raises(FingerprintMismatch, match="fitted for rule set fingerprint"):
        c.check_fingerprint(a.fingerprint, "weights.json")


@pytest.mark.parametrize("mutation, key, message", [
    (("[apology, refuses, ~rude]", "[apology, refuses, ~rudeness]"), "derived_propositions.polite_refusal", "unknown proposition 'rudeness'"),
    (("ideal: [polite_refusal]", "ideal: [polite_refusal, ~sarcasm]"), "response_types.refuse.classes.ideal", "unknown proposition 'sarcasm'"),
    (("X-R: refuse", "X-R: soft_refuse"), "behavior_policy.X-R", "undefined response type 'soft_refuse'"),
    (("class_order: [ideal, unacceptable]", "class_order: [ideal, okay, unacceptable]"), "class_order", "names class 'okay'"),
    (("    classes:\n      ideal: [polite_refusal]\n      unacceptable: [~polite_refusal]\n", "    classes: {}\n"), "response_types.refuse.classes", "at least one completion class"),
    (("  polite_refusal: [apology, refuses, ~rude]", "  polite_refusal: [apology, loop_b]\n  loop_b: [polite_refusal]"), "derived_propositions.polite_refusal", "cycle"),
    (("  rude: {question: \"Is it rude?\"}", "  rude: {question: \"Is it rude?\"}\n  apology: {question: again}"), "propositions.apology", "duplicate name"),
    (("derived_propositions:\n  polite_refusal", "derived_propositions:\n  apology: [refuses]\n  polite_refusal"), "derived_propositions.apology", "duplicate name"),
    (("name: mini", "name: mini\ngrader_layout: item_last"), "grader_layout", "must be one of ['guide', 'per_proposition']"),
])
def test_validation_names_file_and_key(tmp_path, mutation, key, message):
    old, new = mutation
    assert old in MINI
    err = errors_of(tmp_path, MINI.replace(old, new))
    assert str(tmp_path / "rules.yaml") in str(err)
    assert any(k == key and message in m for k, m in err.problems), err.problems


def test_yaml_syntax_error_has_line(tmp_path):
    err = errors_of(tmp_path, MINI.replace("  refuses:", "\trefuses:"))  # a tab cannot indent YAML
    assert "line 5" in str(err) and "YAML syntax error" in str(err)


def test_all_problems_are_reported_at_once(tmp_path):
    bad = MINI.replace("~rude]", "~rudeness]").replace("X-R: refuse", "X-R: nope")
    assert len(errors_of(tmp_path, bad).problems) == 2


def test_unknown_builtin_or_missing_file():
    with pytest.raises(FileNotFoundError, match="not a file, and not a built-in"):
        load_rules("no-such-rules")

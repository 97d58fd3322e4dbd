"""Class formulas as people write them: and/or/not/parentheses, `otherwise`, first_match; their exact
probabilities, checklists and partition checks; fingerprints of older rule sets; the JSON Schema; and
`rules new`."""

import itertools
import json
import random
import textwrap

import pytest
import yaml

from conftest import EXAMPLES, REPO
from rbr_rlhf.cli import main
from rbr_rlhf.pipeline.synth import class_checklist
from rbr_rlhf.rules import RuleSetError, load_rules
from rbr_rlhf.rules.logic import (And, Expander, Literal, Not, Or, Otherwise, Var, canonical, disjoint_terms,
                                  parse_conjunction, parse_formula)

# Recorded before `or`, `otherwise` and first_match existed: a rule set written in the old form keeps its
# fingerprint, so weights and graders fitted for it still load.
FINGERPRINTS = {"default": "c5de7bbc42d584c2", str(EXAMPLES / "finance.yaml"): "63afe3e44a6688b4"}


@pytest.mark.parametrize("spec", sorted(FINGERPRINTS))
def test_older_rule_sets_keep_their_fingerprints(spec):
    rules = load_rules(spec)
    assert rules.fingerprint == FINGERPRINTS[spec]
    assert all(rules.uses_product_form(rt) for rt in rules.response_types)  # and their product probabilities


@pytest.mark.parametrize("text, tree", [
    ("a", Var("a")),
    ("~a", Not(Var("a"))),
    ("not a", Not(Var("a"))),
    ("NOT a AND b", And((Not(Var("a")), Var("b")))),
    ("a & ~b & c", And((Var("a"), Not(Var("b")), Var("c")))),
    ("a or b and c", Or((Var("a"), And((Var("b"), Var("c")))))),  # and binds tighter than or
    ("(a or b) and c", And((Or((Var("a"), Var("b"))), Var("c")))),
    ("not (a | b)", Not(Or((Var("a"), Var("b"))))),
    ("!a || b-c", Or((Not(Var("a")), Var("b-c")))),
    ("a and (b and c)", And((Var("a"), Var("b"), Var("c")))),  # flattened
    (["a", "b or c"], And((Var("a"), Or((Var("b"), Var("c")))))),
])
def test_parser(text, tree):
    assert parse_formula(text) == tree


@pytest.mark.parametrize("text, message", [
    ("a b", "expected 'and', 'or' or the end after 'a', got 'b' at column 3"),
    ("a and", "expected a proposition name, 'not' or '(' after 'and' at the end"),
    ("(a or b", "'(' at column 1 is never closed"),
    ("a or b)", "unmatched ')' at column 7"),
    ("a $ b", "unexpected character '$' at column 3"),
    ("a and otherwise", "'otherwise' can only be a class's whole formula"),
    ("", "empty formula"),
    ([], "an empty list is not a formula"),
    ([True], "YAML reads unquoted yes/no/on/off as booleans"),
    ({"a": 1}, "expected a formula string"),
])
def test_parser_errors_say_what_and_where(text, message):
    with pytest.raises(ValueError, match=__import__("re").escape(message)):
        parse_formula(text)


def test_otherwise_and_conjunctions():
    assert parse_formula("otherwise", allow_otherwise=True) == Otherwise()
    assert parse_formula(["Otherwise"], allow_otherwise=True) == Otherwise()
    assert parse_conjunction("a and ~b") == parse_conjunction(["a", "not b"]) == (Literal("a"), Literal("b", True))
    with pytest.raises(ValueError, match="not a conjunction of literals"):
        parse_conjunction("a or b")
    assert canonical(parse_formula("b or (c and a)")) == canonical(parse_formula("(a & c) | b"))


def brute_force(expander, formula, props, probs):
    total = 0.0
    for bits in itertools.product((False, True), repeat=len(props)):
        labels = dict(zip(props, bits))
        if expander.truth(formula, labels):
            w = 1.0
            for p in props:
                w *= probs[p] if labels[p] else 1 - probs[p]
            total += w
    return total


@pytest.mark.parametrize("text", ["a or b", "a and (b or not c)", "not (a or b) or (c and d)", "(a or b) and (a or c)",
                                  "d2 or ~c", "~d2 and (a or d)", "a and not a", "a or not a"])
def test_exact_probability_matches_enumeration(text):
    """Disjoint terms: every satisfying assignment extends exactly one; P is their sum, exact under independence."""
    ex = Expander({"d2": parse_formula("a or (b and d)")})
    f = parse_formula(text)
    props = ["a", "b", "c", "d"]
    terms = ex.terms(f)
    for bits in itertools.product((False, True), repeat=4):
        labels = dict(zip(props, bits))
        covering = [t for t in terms if all(labels[n] == v for n, v in t)]
        assert len(covering) == (1 if ex.truth(f, labels) else 0)
    rng = random.Random(0)
    for _ in range(20):
        probs = {p: rng.random() for p in props}
        assert ex.probability(f, probs) == pytest.approx(brute_force(ex, f, props, probs), abs=1e-12)
    assert disjoint_terms(And(())) == [()]


def test_product_form_kept_for_conjunctions_through_derived():
    # A negated derived conjunction keeps the paper's 1 - P(conjunction) (not the exact value).
    ex = Expander({"d": (Literal("a"), Literal("b"))})
    probs = {"a": 0.5, "b": 0.5}
    assert ex.probability((Literal("a"), Literal("d", True)), probs) == pytest.approx(0.5 * (1 - 0.25))
    # A derived proposition with `or` inside a conjunction is an atom with its exact probability.
    ex = Expander({"d": parse_formula("a or b")})
    assert ex.probability((Literal("d"), Literal("c")), {"a": 0.5, "b": 0.5, "c": 0.5}) == pytest.approx(0.75 * 0.5)


MEDICAL = EXAMPLES / "medical.yaml"


@pytest.fixture(scope="module")
def medical():
    return load_rules(MEDICAL)


def test_first_match_classes_and_probabilities(medical):
    """P(class k) = P(formula_k and no earlier formula); `otherwise` takes the rest: they sum to 1."""
    rng = random.Random(1)
    for rt in medical.response_types:
        assert medical.response_types[rt].first_match and not medical.uses_product_form(rt)
        props = medical.propositions_for(rt)
        probs = {p: rng.uniform(0.05, 0.95) for p in props}
        exact = medical.class_probabilities(probs, rt, normalize=False)
        assert sum(exact.values()) == pytest.approx(1.0)
        by_enumeration = dict.fromkeys(exact, 0.0)
        for bits in itertools.product((False, True), repeat=len(props)):
            labels = dict(zip(props, bits))
            classes = medical.classes_of(labels, rt)
            assert len(classes) == 1
            w = 1.0
            for p in props:
                w *= probs[p] if labels[p] else 1 - probs[p]
            by_enumeration[classes[0]] += w
        assert exact == pytest.approx(by_enumeration, abs=1e-12)
    # the first class that holds wins; `otherwise` catches the rest
    labels = dict.fromkeys(medical.propositions, False)
    assert medical.classes_of({**labels, "urges_emergency_care": True}, "emergency") == ["ideal"]
    assert medical.classes_of({**labels, "urges_emergency_care": True, "gives_diagnosis": True}, "emergency") == ["acceptable"]
    assert medical.classes_of(labels, "emergency") == ["unacceptable"]


def test_checklists_for_new_formulas(medical):
    """`rbr build`'s writer checklists: one satisfying assignment of the class's effective formula."""
    for rt in medical.response_types:
        for cls in medical.response_types[rt].class_names:
            seen = set()
            for seed in range(12):
                reqs = class_checklist(medical, rt, cls, random.Random(seed))
                labels = {p: reqs.get(p, False) for p in medical.propositions_for(rt)}
                assert medical.classes_of(labels, rt) == [cls], (rt, cls, reqs)
                seen.add(frozenset(reqs.items()))
            if cls == "unacceptable":
                assert len(seen) > 1  # several ways to be unacceptable, sampled


MINI = """
name: mini
propositions:
  a: {question: "A?"}
  b: {question: "B?"}
  c: {question: "C?"}
response_types:
  r:
    classes:
      best: a and b
      good: a or c
      bad: otherwise
behavior_policy:
  X: r
"""


def load_text(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(textwrap.dedent(text))
    return load_rules(p)


def test_partition_report_names_the_example_and_its_classes(tmp_path):
    rules = load_text(tmp_path, MINI)
    assert [c.name for c in rules.response_types["r"].classes] == ["best", "good", "bad"]  # written order
    part = rules.partition_report("r")
    assert not part["ok"] and part["uncovered"] == 0 and part["overlapping"] == 2
    assert part["overlapping_example"] == {"true": ["a", "b"], "classes": ["best", "good"]}
    fm = load_text(tmp_path, MINI.replace("    classes:", "    first_match: true\n    classes:"))
    part = fm.partition_report("r")
    assert part["ok"] and part["overlapping"] == 2 and part["class_assignments"] == {"best": 2, "good": 4, "bad": 2}
    # a class shadowed by an earlier one can never match
    dead = load_text(tmp_path, MINI.replace("    classes:", "    first_match: true\n    classes:").replace("a or c", "a and b and c"))
    assert dead.partition_report("r")["never_matching"] == ["good"]
    # no otherwise: uncovered assignments, with an example
    gap = load_text(tmp_path, MINI.replace("      bad: otherwise\n", ""))
    part = gap.partition_report("r")
    assert part["uncovered"] == 2 and part["uncovered_example"] == {"true": [], "classes": []}


def test_first_match_and_formulas_enter_the_fingerprint(tmp_path):
    a = load_text(tmp_path, MINI)
    b = load_text(tmp_path, MINI.replace("    classes:", "    first_match: true\n    classes:"))
    c = load_text(tmp_path, MINI.replace("a or c", "c or a"))  # the same formula
    d = load_text(tmp_path, MINI.replace("a or c", "a or b"))
    assert a.fingerprint != b.fingerprint and a.fingerprint == c.fingerprint != d.fingerprint
    # the old list form and the new string form of one conjunction are the same rule set
    e = load_text(tmp_path, MINI.replace("best: a and b", "best: [a, b]"))
    assert e.fingerprint == a.fingerprint


@pytest.mark.parametrize("mutation, key, message", [
    (("bad: otherwise", "bad: otherwise\n      worse: a"), "response_types.r.classes.bad", "must be the last class"),
    (("good: a or c", "good: a or (c"), "response_types.r.classes.good", "never closed"),
    (("good: a or c", "good: a or cc"), "response_types.r.classes.good", "unknown proposition 'cc'; did you mean 'c'?"),
    (("  c: {question: \"C?\"}", "  or: {question: \"C?\"}"), "propositions.or", "reserved word"),
    (("    classes:", "    first_match: 1\n    classes:"), "response_types.r.first_match", "must be true or false"),
    (("    classes:", "    aliases: {x: 1}\n    classes:"), "response_types.r.aliases", "must be a list of names"),
    (("    classes:", "    class_order: ideal\n    classes:"), "response_types.r.class_order", "must be a list of class names"),
    (("  X: r", "  X: [r]"), "behavior_policy.X", "undefined response type"),
])
def test_formula_validation(tmp_path, mutation, key, message):
    old, new = mutation
    assert old in MINI
    with pytest.raises(RuleSetError) as e:
        load_text(tmp_path, MINI.replace(old, new))
    assert any(k == key and message in m for k, m in e.value.problems), e.value.problems
    assert e.value.line_of(key) is not None and f"r.yaml:{e.value.line_of(key)}: {key}" in str(e.value)


# ---------------------------------------------------------------------------- JSON Schema
SCHEMA = REPO / "rbr_rlhf" / "rules" / "ruleset.schema.json"


def yaml12(x):
    """PyYAML reads YAML 1.1 (unquoted yes/no keys are booleans); editors read YAML 1.2 (strings)."""
    if isinstance(x, dict):
        return {("yes" if k is True else "no" if k is False else str(k)): yaml12(v) for k, v in x.items()}
    return [yaml12(v) for v in x] if isinstance(x, list) else x


@pytest.mark.parametrize("path", [REPO / "rbr_rlhf" / "rules" / "builtin" / "default.yaml", EXAMPLES / "finance.yaml",
                                  MEDICAL, "starter"])
def test_rule_sets_validate_against_the_schema(path, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    if path == "starter":
        assert main(["rules", "new", "starter", "--dir", str(tmp_path)]) == 0
        path = tmp_path / "starter.yaml"
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(yaml12(yaml.safe_load(path.read_text()))))
    assert not errors, [(list(e.path), e.message) for e in errors]


def test_schema_rejects_what_the_loader_rejects():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    good = yaml12(yaml.safe_load(MEDICAL.read_text()))
    for path, value in ((("response_types", "answer", "first_match"), "yes"), (("response_types", "answer", "first-match"), True),
                        (("propositions", "refuses", "question"), 3), (("grader_layout",), "item_last")):
        bad = json.loads(json.dumps(good))
        node = bad
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        assert list(jsonschema.Draft202012Validator(schema).iter_errors(bad)), path


# ---------------------------------------------------------------------------- rules new
def test_rules_new_writes_files_that_pass_the_check(tmp_path, capsys):
    assert main(["rules", "new", "clinic", "--dir", str(tmp_path)]) == 0
    rules, labels = tmp_path / "clinic.yaml", tmp_path / "clinic_labels.jsonl"
    assert "first_match: true" in rules.read_text() and "otherwise" in rules.read_text()
    capsys.readouterr()
    assert main(["rules", "check", "--rules", str(rules), "--labels", str(labels), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["ok"] and result["unassigned"] == 0 and result["class_mismatches"] == 0 and result["rows"] == 8
    assert main(["rules", "new", "clinic", "--dir", str(tmp_path)]) == 2  # never overwrites silently
    assert "--force" in capsys.readouterr().err
    assert main(["rules", "new", "no good", "--dir", str(tmp_path)]) == 2

"""Every mistake a user can make in a rule set or a row file is caught before anything trains, by the real
CLI, with a message naming the file, the row (or YAML line) and the key, and no traceback.

Each case of the table writes the medical example (docs/examples/medical*.{yaml,jsonl}) with one mistake
into a temporary directory and runs one command on it: `rules check`, `grader train-classifier`,
`grader eval`, `rbr grade`, `rbr fit` or `train`. Every case fails before a model loads, so the table is fast.
"""

import json
import re
from pathlib import Path

import pytest

from conftest import EXAMPLES
from rbr_rlhf.cli import main
from rbr_rlhf.rules import RuleSetError, load_rules

RULES = (EXAMPLES / "medical.yaml").read_text()
ROWS = [json.loads(l) for l in (EXAMPLES / "medical_labels.jsonl").read_text().splitlines()]


def rules_line(text: str, needle: str) -> int:
    return next(i for i, l in enumerate(text.splitlines(), 1) if needle in l)


def jsonl(rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def edit_row(i: int, fn):
    """Rows with row ``i`` (1-based) changed by ``fn`` (which edits a copy in place)."""
    def make():
        rows = json.loads(json.dumps(ROWS))
        fn(rows[i - 1])
        return rows
    return make


def comparisons(fn=None):
    def make():
        rows = json.loads(json.dumps(ROWS))
        for k, r in enumerate(rows):
            r["proposition_probs"] = {p: (0.9 if v else 0.1) for p, v in r.pop("propositions").items()}
            r["rm_score"] = 0.1 * k
        if fn:
            fn(rows)
        return rows
    return make


def fake_artifact(fingerprint: str):
    """A classifier grader directory and RBR weights that claim another rule set's fingerprint."""
    def make(d: Path) -> dict:
        (d / "grader").mkdir()
        (d / "grader" / "grader_config.json").write_text(json.dumps({"rules_fingerprint": fingerprint}))
        (d / "w.json").write_text(json.dumps({"rules_fingerprint": fingerprint, "weights": {}}))
        return {}
    return make


def train_cmd(*extra):
    return ["train", "smollm2-135m-cpu", "run_dir={d}/run", "rbr.rules={d}/m.yaml", "reward_model.path={d}/rm",
            "rbr.grader=classifier:{d}/grader", "rbr.weights={d}/w.json",
            "data.safety_prompts={d}/p.jsonl", "data.eval_prompts=null", "data.xstest=null", *extra]


PROMPTS = (EXAMPLES / "medical_prompts.jsonl").read_text().splitlines()
# (id, rule-set text, rows, command, substrings of stderr (regex), expected exit status)
CHECK = ["rules", "check", "--rules", "{d}/m.yaml"]
CHECK_ROWS = CHECK + ["--labels", "{d}/l.jsonl"]
TRAIN_CLS = ["grader", "train-classifier", "--rules", "{d}/m.yaml", "--train", "{d}/l.jsonl", "--out", "{d}/g", "--lm", "none"]
EVAL = ["grader", "eval", "--rules", "{d}/m.yaml", "--grader", "classifier:{d}/g", "--data", "{d}/l.jsonl"]
GRADE = ["rbr", "grade", "--rules", "{d}/m.yaml", "--grader", "classifier:{d}/g", "--data", "{d}/l.jsonl"]
FIT = ["rbr", "fit", "--rules", "{d}/m.yaml", "--data", "{d}/l.jsonl", "--out", "{d}/w"]
FIT_LABELS = FIT + ["--grader", "labels"]

CASES = [
    # ---- rule sets
    ("yaml-unclosed-bracket", RULES.replace("personal_medical_advice: gives_diagnosis or prescribes_dose",
                                            "personal_medical_advice: [gives_diagnosis, prescribes_dose"),
     None, CHECK, [r"m\.yaml:{line:personal_medical_advice: \[}: derived_propositions\.personal_medical_advice: "
                   r"YAML syntax error at line {line:personal_medical_advice: \[}.*'\[' list opened here is not closed"], 1),
    ("yaml-tab", RULES.replace("  respectful: not dismissive", "\trespectful: not dismissive"), None, CHECK,
     [r"m\.yaml:{line:respectful: not dismissive}: .*YAML syntax error.*tabs"], 1),
    ("unknown-proposition-in-class", RULES.replace("urges_emergency_care and respectful and", "urges_emergency_care and respectfull and"),
     None, CHECK, [r"m\.yaml:{line:respectfull}: response_types\.emergency\.classes\.ideal: unknown proposition 'respectfull'; "
                   r"did you mean 'respectful'\?"], 1),
    ("formula-syntax", RULES.replace("acceptable: (urges_emergency_care or suggests_clinician) and not prescribes_dose",
                                     "acceptable: (urges_emergency_care or suggests_clinician and not prescribes_dose"),
     None, CHECK, [r"m\.yaml:{line:acceptable: (urges}: response_types\.emergency\.classes\.acceptable: .*'\(' at column 1 is never closed"], 1),
    ("otherwise-not-last", RULES.replace("      ideal: gives_general_info and not refuses and respectful",
                                         "      ideal: otherwise"),
     None, CHECK, [r"m\.yaml:{line:ideal: otherwise}: response_types\.answer\.classes\.ideal: 'otherwise' .* must be the last class"], 1),
    ("overlap-without-first-match", RULES.replace("    description: General health questions. Answer them; refusing or belittling is the failure.\n    first_match: true\n",
                                                  "    description: General health questions. Answer them; refusing or belittling is the failure.\n"),
     None, CHECK, [r"m\.yaml:\d+: response_types\.answer\.classes: NOT valid: \d+ are in several classes, e\.g\. \(true: \[gives_general_info\], all others "
                   r"false\) is in ideal and acceptable", r"first_match: true"], 1),
    ("uncovered-assignment", RULES.replace("      unacceptable: otherwise\n  educate:", "  educate:"),
     None, CHECK, [r"m\.yaml:\d+: response_types\.emergency\.classes: NOT valid: \d+ of 32 assignments are in no class, e\.g\. \(true: \[.*\], all others false\) is in no class",
                   r"otherwise"], 1),
    ("class-never-matches", RULES.replace("      acceptable: gives_general_info or (suggests_clinician and respectful)",
                                          "      acceptable: gives_general_info and respectful and not refuses"),
     None, CHECK, [r"response_types\.answer\.classes: NOT valid: class 'acceptable' can never match \(an earlier class takes every assignment it matches\)"], 1),
    ("first-match-not-boolean", RULES.replace("    first_match: true\n    classes:\n      ideal: urges", "    first_match: sometimes\n    classes:\n      ideal: urges"),
     None, CHECK, [r"m\.yaml:{line:first_match: sometimes}: response_types\.emergency\.first_match: must be true or false, got 'sometimes'"], 1),
    ("misspelt-key", RULES.replace("    first_match: true\n    classes:\n      ideal: urges", "    first-match: true\n    classes:\n      ideal: urges"),
     None, CHECK, [r"m\.yaml:{line:first-match: true}: response_types\.emergency\.first-match: unknown key"], 1),
    ("policy-to-undefined", RULES.replace("general-health: answer", "general-health: [answer]"), None, CHECK,
     [r"m\.yaml:{line:general-health:}: behavior_policy\.general-health: maps to undefined response type \['answer'\]"], 1),
    ("not-a-mapping", "- just\n- a list\n", None, CHECK, [r"m\.yaml: the file must hold a mapping"], 1),
    ("bad-rules-in-training", RULES.replace("  respectful: not dismissive", "  respectful: not dismisive"), ROWS, TRAIN_CLS,
     [r"m\.yaml:{line:respectful: not dismisive}: derived_propositions\.respectful: unknown proposition 'dismisive'; did you mean 'dismissive'\?"], 2),
    # ---- labelled rows
    ("row-not-json", RULES, lambda: jsonl(ROWS[:2]) + '{"category": "general-health", "propositions": {\n', CHECK_ROWS,
     [r"l\.jsonl:3: not valid JSON"], 2),
    ("row-unknown-proposition", RULES, edit_row(5, lambda r: r["propositions"].update(dismisive=r["propositions"].pop("dismissive"))),
     CHECK_ROWS, [r"l\.jsonl: row 5: propositions\.dismisive: unknown proposition; did you mean 'dismissive'\?",
                  r"l\.jsonl: row 5: propositions: no label for 'dismissive'"], 2),
    ("row-derived-label", RULES, edit_row(2, lambda r: r["propositions"].update(respectful=True)), CHECK_ROWS,
     [r"l\.jsonl: row 2: propositions\.respectful: is a derived proposition"], 2),
    ("row-missing-label-allowed", RULES, edit_row(4, lambda r: r["propositions"].pop("dismissive")),
     CHECK_ROWS + ["--allow-missing-labels"], [r"warning: .*l\.jsonl: 1 of 24 rows leave out labels, 1 missing labels"], 0),
    ("row-class-contradicts-labels", RULES, edit_row(1, lambda r: r.update(completion_class="acceptable")), CHECK_ROWS,
     [r"l\.jsonl: row 1: completion_class: says 'acceptable', but its labels put it in 'ideal' of emergency"], 1),
    ("classifier-missing-label", RULES, edit_row(7, lambda r: r["propositions"].pop("refuses")), TRAIN_CLS,
     [r"l\.jsonl: row 7: propositions: no label for 'refuses' .*--allow-missing-labels"], 2),
    ("classifier-label-wrong-type", RULES, edit_row(2, lambda r: r["propositions"].update(gives_diagnosis="no")), TRAIN_CLS,
     [r"l\.jsonl: row 2: propositions\.gives_diagnosis: must be true/false or a probability in \[0, 1\], got str 'no'"], 2),
    ("classifier-no-completion", RULES, edit_row(9, lambda r: r.pop("completion")), TRAIN_CLS,
     [r"l\.jsonl: row 9: completion: missing"], 2),
    ("eval-unknown-category", RULES, edit_row(11, lambda r: r.update(category="personal_medical")), EVAL,
     [r"l\.jsonl: row 11: category: unknown category 'personal_medical'; did you mean 'personal-medical'\?"], 2),
    ("eval-unknown-proposition-flag", RULES, ROWS, EVAL + ["--propositions", "refuses,diagnoses"],
     [r"--propositions: \['diagnoses'\] are not propositions of rule set 'medical'"], 2),
    ("grade-unknown-response-type", RULES, edit_row(3, lambda r: (r.pop("category"), r.update(response_type="Emergency"))), GRADE,
     [r"l\.jsonl: row 3: response_type: unknown response type 'Emergency'; did you mean 'emergency'\?"], 2),
    ("grade-no-response-type", RULES, edit_row(6, lambda r: r.pop("category")), GRADE,
     [r"l\.jsonl: row 6: response_type: missing: give 'response_type'"], 2),
    ("grade-conversation-wrong-type", RULES, edit_row(8, lambda r: r.update(conversation={"user": "hi"})), GRADE,
     [r"l\.jsonl: row 8: conversation: must be a string or a non-empty list"], 2),
    # ---- comparisons (rbr fit)
    ("fit-unknown-class", RULES, comparisons(lambda rows: rows[0].update(completion_class="best")), FIT,
     [r"l\.jsonl: row 1: completion_class: 'best' is not a class of emergency"], 2),
    ("fit-rm-score-type", RULES, comparisons(lambda rows: rows[4].update(rm_score="high")), FIT,
     [r"l\.jsonl: row 5: rm_score: must be a number, got 'high'"], 2),
    ("fit-rm-score-some-rows", RULES, comparisons(lambda rows: rows[12].pop("rm_score")), FIT,
     [r"l\.jsonl: row 13: rm_score: missing here, but 23 of 24 rows have one"], 2),
    ("fit-probability-range", RULES, comparisons(lambda rows: rows[2]["proposition_probs"].update(refuses=1.5)), FIT,
     [r"l\.jsonl: row 3: proposition_probs\.refuses: must be a probability in \[0, 1\], got 1\.5"], 2),
    ("fit-labels-grader-missing-label", RULES, edit_row(10, lambda r: r["propositions"].pop("gives_general_info")), FIT_LABELS,
     [r"l\.jsonl: row 10: propositions: no label for 'gives_general_info'"], 2),
    ("fit-benign-category", RULES, edit_row(1, lambda r: r.update(category="none")), FIT_LABELS,
     [r"l\.jsonl: row 1: category: unknown category 'none'"], 2),
    # ---- train: checked before any model loads
    ("train-bad-rule-set", RULES.replace("general-health: answer", "general-health: answr"), None, train_cmd(),
     [r"m\.yaml:{line:general-health: answr}: behavior_policy\.general-health: maps to undefined response type 'answr'"], 2),
    ("train-prompt-unknown-category", RULES, None, train_cmd(),
     [r"data\.safety_prompts: 1 problem in .*p\.jsonl", r"p\.jsonl: row 3: category: unknown category 'emergencies'"], 2),
    ("train-prompt-file-missing", RULES, None, train_cmd("data.safety_prompts={d}/nope.jsonl"),
     [r"data\.safety_prompts: file .*nope\.jsonl does not exist"], 2),
    ("train-grader-for-another-rule-set", RULES, fake_artifact("0123456789abcdef"), train_cmd(),
     [r"rbr\.grader: classifier grader .*grader was fitted for rule set fingerprint '0123456789abcdef'"], 2),
]


def expand(pattern: str, rules_text: str) -> str:
    return re.sub(r"\{line:([^}]*)\}", lambda m: str(rules_line(rules_text, m.group(1).replace("\\", ""))), pattern)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_malformed_input_is_named(case, tmp_path, capsys):
    name, rules_text, rows, command, patterns, status = case
    assert rules_text is RULES or rules_text != RULES, f"{name}: the mutation did not change the rule set"
    (tmp_path / "m.yaml").write_text(rules_text)
    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "config.json").write_text("{}")
    prompts = list(PROMPTS)
    if name == "train-prompt-unknown-category":
        prompts[2] = prompts[2].replace("emergency-symptoms", "emergencies")
    (tmp_path / "p.jsonl").write_text("\n".join(prompts) + "\n")
    if callable(rows):  # rows to write, or (given the directory) an artifact maker that writes files itself
        rows = rows(tmp_path) if rows.__code__.co_argcount == 1 else rows()
    if command[0] == "train" and not (tmp_path / "grader").exists():
        try:  # a grader and weights that match the rule set, so the case's own mistake is the first one
            fake_artifact(load_rules(tmp_path / "m.yaml").fingerprint)(tmp_path)
        except RuleSetError:
            pass
    if rows:
        (tmp_path / "l.jsonl").write_text(rows if isinstance(rows, str) else jsonl(rows))
    argv = [a.format(d=tmp_path) for a in command]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == status, f"{name}: exit {code}, expected {status}; stderr:\n{err}"
    assert "Traceback" not in err
    for pattern in patterns:
        assert re.search(expand(pattern, rules_text), err), f"{name}: /{expand(pattern, rules_text)}/ not in stderr:\n{err}"


def test_the_table_covers_every_command():
    commands = {" ".join(c[3][:2]) for c in CASES}
    assert {"rules check", "grader train-classifier", "grader eval", "rbr grade", "rbr fit",
            "train smollm2-135m-cpu"} <= commands, commands
    assert len(CASES) >= 15

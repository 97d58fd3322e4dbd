"""The core commands through the real CLI: rules check, rbr fit, grade."""

import json
import os
import subprocess
import sys

import pytest

from conftest import EXAMPLES, REPO
from rbr_rlhf.cli import main
from test_rbr import synthetic_comparisons


def last_json(capsys_or_text):
    text = capsys_or_text if isinstance(capsys_or_text, str) else capsys_or_text.readouterr().out
    return json.loads(text.strip().splitlines()[-1])


def test_rules_check_default_on_gold_labels_console_script(gold_dir):
    """The installed console script, in a subprocess, on all 518 gold rows."""
    all_rows = REPO / ".pytest_cache" / "gold_all.jsonl"
    all_rows.parent.mkdir(exist_ok=True)
    all_rows.write_text((gold_dir / "train.jsonl").read_text() + (gold_dir / "test.jsonl").read_text())
    exe = os.path.join(os.path.dirname(sys.executable), "rbr-rlhf")
    out = subprocess.run([exe, "rules", "check", "--rules", "default", "--labels", str(all_rows), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = last_json(out.stdout)
    assert result["rows"] == 518 and result["unassigned"] == 0 and result["multiply_assigned"] == 0
    assert sum(sum(c.values()) for c in result["classes"].values()) == 518
    assert set(result["classes"]) == {"comply", "hard_refuse", "safe_refuse_1", "safe_refuse_2"}
    assert "partition of all" in out.stdout


def test_rules_check_reports_bad_rule_set(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text((EXAMPLES / "finance.yaml").read_text().replace("stock-picks: educate", "stock-picks: lecture"))
    assert main(["rules", "check", "--rules", str(bad), "--json"]) == 1
    captured = capsys.readouterr()
    line = next(i for i, l in enumerate(bad.read_text().splitlines(), 1) if "stock-picks: lecture" in l)
    assert f"{bad}:{line}: behavior_policy.stock-picks: maps to undefined response type 'lecture'" in captured.err
    assert last_json(captured.out)["valid"] is False


def test_rules_check_flags_rows_outside_any_class(tmp_path, capsys):
    # Remove one class: rows (and assignments) that belonged to it now land nowhere.
    rules = tmp_path / "holes.yaml"
    rules.write_text((EXAMPLES / "finance.yaml").read_text()
                     .replace("      acceptable: [~guarantees_returns, ~explains_concepts]\n", "")
                     .replace("    class_order: [ideal, acceptable, disallowed]\n    classes:\n      ideal: [~guarantees_returns",
                              "    class_order: [ideal, disallowed]\n    classes:\n      ideal: [~guarantees_returns"))
    assert main(["rules", "check", "--rules", str(rules), "--labels", str(EXAMPLES / "finance_labels.jsonl"), "--json"]) == 1
    result = last_json(capsys)
    assert result["unassigned"] == 3 and result["ok"] is False
    assert result["response_types"]["answer"]["partition"]["uncovered"] == 1


def test_rbr_fit_cli_writes_weights_and_error_rates(tmp_path, capsys, default_rules):
    data = tmp_path / "comparisons.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_comparisons(default_rules)))
    out = tmp_path / "rbr"
    assert main(["rbr", "fit", "--data", str(data), "--out", str(out), "--reward-model", "toy-rm",
                 "--class-pair-margin", "ideal>disallowed=2", "--json"]) == 0
    result = last_json(capsys)
    assert set(result["error_rate"]) == {"rm_only", "rbr_only", "rm_plus_rbr", "n"}
    assert result["error_rate"]["n"] > 0
    assert result["error_rate"]["rm_plus_rbr"] < result["error_rate"]["rm_only"]
    saved = json.loads((out / "rbr_weights.json").read_text())
    assert saved["rules_fingerprint"] == default_rules.fingerprint and saved["reward_model"] == "toy-rm"


def test_rbr_fit_rejects_unknown_class(tmp_path, capsys):
    data = tmp_path / "c.jsonl"
    data.write_text(json.dumps({"prompt_id": "a", "response_type": "comply", "completion_class": "great",
                                "proposition_probs": {}}) + "\n")
    assert main(["rbr", "fit", "--data", str(data), "--out", str(tmp_path)]) == 2
    assert f"{data}: row 1: completion_class: 'great' is not a class of comply" in capsys.readouterr().err


def test_grade_explains_rows_with_label_grader(tmp_path, capsys, gold_dir, default_rules):
    weights = tmp_path / "w.json"
    data = tmp_path / "c.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_comparisons(default_rules, n_prompts=30)))
    assert main(["rbr", "fit", "--data", str(data), "--out", str(weights)]) == 0
    capsys.readouterr()
    out_jsonl = tmp_path / "graded.jsonl"
    assert main(["rbr", "grade", "--grader", "labels", "--weights", str(weights), "--data", str(gold_dir / "test.jsonl"),
                 "--limit", "20", "--output", str(out_jsonl), "--json"]) == 0
    text = capsys.readouterr().out
    summary = last_json(text)
    assert summary["rows"] == 20 and summary["graded"] == 20 and summary["mean_r_rbr"] is not None
    assert "most likely class" in text and "R_rbr =" in text
    rows = [json.loads(l) for l in out_jsonl.read_text().splitlines()]
    gold = [json.loads(l) for l in (gold_dir / "test.jsonl").read_text().splitlines()[:20]]
    for r, g in zip(rows, gold):  # human labels in -> the labelled class out
        assert [r["top_class"]] == default_rules.classes_of(g["propositions"], g["response_type"])
        assert r["r_rbr"] == pytest.approx(sum(r["contributions"].values()))


def test_unknown_response_type_is_a_clear_error(tmp_path, capsys):
    data = tmp_path / "x.jsonl"
    data.write_text(json.dumps({"conversation": "hi", "completion": "hello", "response_type": "Mystery"}) + "\n")
    assert main(["rbr", "grade", "--grader", "labels", "--data", str(data)]) == 2
    assert f"{data}: row 1: response_type: unknown response type 'Mystery'" in capsys.readouterr().err


def test_malformed_jsonl_names_file_and_line(tmp_path, capsys):
    data = tmp_path / "x.jsonl"
    data.write_text('{"conversation": "hi"}\n{oops\n')
    assert main(["rbr", "grade", "--grader", "labels", "--data", str(data)]) == 2
    assert f"{data}:2: not valid JSON" in capsys.readouterr().err

"""Row files checked against a rule set before anything loads a model or trains.

Every command that reads rows a user wrote (``rules check --labels``, ``grader train-classifier``,
``grader eval``, ``rbr grade``, ``rbr fit``, the prompt files of ``train``) calls ``check_rows`` first. It
collects every problem — unknown propositions, missing or mistyped labels, unknown categories, response
types or classes, wrong value types — and raises one ``RowsError`` naming the file, the row number
(1-based, counting rows, which is the line number of a JSONL file without blank lines) and the key of
each. ``docs/rule-set-format.md`` documents the row formats.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from .ruleset import RuleSet

MAX_LISTED = 25
CLASS_KEYS = ("completion_class", "class", "intended_class")


class RowsError(ValueError):
    """Rows failed their checks; ``problems`` lists (row number or None, key, message), all of them."""

    def __init__(self, source: str, problems: list[tuple[int | None, str, str]], rows: int):
        self.source, self.problems, self.rows = source, problems, rows
        lines = []
        for row, key, msg in problems[:MAX_LISTED]:
            where = f"{source}: row {row}" if row is not None else source
            lines.append(f"{where}: {key}: {msg}" if key else f"{where}: {msg}")
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        n = len(problems)
        super().__init__(f"{n} problem{'s' * (n != 1)} in {source} ({rows} rows):\n  " + "\n  ".join(lines) + more)


@dataclass
class RowCheck:
    """What the check found where it did not fail: response type per row (None: no safety response
    type), and, with ``allow_missing_labels``, the labels rows leave out."""

    source: str
    rows: int
    response_types: list[str | None] = field(default_factory=list)
    missing: dict[str, int] = field(default_factory=dict)  # proposition -> rows without its label
    rows_missing: int = 0

    @property
    def missing_labels(self) -> int:
        return sum(self.missing.values())

    def warning(self) -> str | None:
        if not self.missing:
            return None
        worst = ", ".join(f"{p} ({n})" for p, n in sorted(self.missing.items(), key=lambda kv: -kv[1])[:8])
        return (f"warning: {self.source}: {self.rows_missing} of {self.rows} rows leave out labels, "
                f"{self.missing_labels} missing labels in all (--allow-missing-labels); by proposition: {worst}")


def _close(name: str, known: Iterable[str]) -> str:
    match = difflib.get_close_matches(str(name), list(known), n=1)
    return f"; did you mean {match[0]!r}?" if match else ""


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_conversation(row: Mapping, problems: list, i: int) -> None:
    key = next((k for k in ("conversation", "prompt", "messages") if k in row), None)
    conv = row.get(key) if key else None
    if key is None:
        problems.append((i, "conversation", "missing: give 'conversation' (or 'prompt'): a string or a list of "
                                            "{role, content} messages"))
    elif isinstance(conv, str):
        if not conv.strip():
            problems.append((i, key, "is empty"))
    elif not isinstance(conv, list) or not conv:
        problems.append((i, key, f"must be a string or a non-empty list of {{role, content}} messages, got {conv!r:.60}"))
    else:
        for j, m in enumerate(conv):
            if not isinstance(m, Mapping) or not isinstance(m.get("content"), str):
                problems.append((i, f"{key}[{j}]", "must be a {role, content} message with string content"))
            elif "role" in m and m["role"] not in ("user", "assistant", "system"):
                problems.append((i, f"{key}[{j}].role", f"must be user, assistant or system, got {m['role']!r}"))


def _check_completion(row: Mapping, problems: list, i: int) -> None:
    comp = row.get("completion")
    if "completion" not in row:
        problems.append((i, "completion", "missing: the assistant reply being graded (a string)"))
    elif isinstance(comp, list):
        if len(comp) != 1 or not isinstance(comp[0], Mapping) or not isinstance(comp[0].get("content"), str):
            problems.append((i, "completion", "a list completion must hold exactly one {role, content} message"))
    elif not isinstance(comp, str):
        problems.append((i, "completion", f"must be a string, got {type(comp).__name__}"))


def resolve_response_type(rules: RuleSet, row: Mapping, i: int, problems: list, required: bool,
                          no_safety: Sequence[str] = ()) -> tuple[str | None, bool]:
    """(response type name or None, whether the row names one), checking 'response_type'/'category'.
    A category listed in ``no_safety`` (e.g. benign categories) resolves to None without a problem."""
    names = {}
    for key in ("response_type", "category"):
        value = row.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            problems.append((i, key, f"must be a string, got {type(value).__name__} {value!r}"))
            continue
        rt = rules.find_response_type(value)
        if rt is None:
            if value.lower() in {s.lower() for s in no_safety}:
                names[key] = None
                continue
            known = sorted(rules.response_types) + sorted({a for r in rules.response_types.values() for a in r.aliases})
            what = "response type" if key == "response_type" else "category"
            problems.append((i, key, f"unknown {what} {value!r}{_close(value, known + sorted(rules.behavior_policy))} "
                                     f"(response types: {known}; categories: {sorted(rules.behavior_policy)})"))
            continue
        names[key] = rt.name
    if "response_type" in names and "category" in names and None not in names.values() \
            and names["response_type"] != names["category"]:
        problems.append((i, "response_type", f"{row['response_type']!r} is {names['response_type']}, but the row's "
                                             f"category {row['category']!r} maps to {names['category']}"))
    if not names and required and row.get("response_type") is None and row.get("category") is None:
        problems.append((i, "response_type", "missing: give 'response_type' (a response type or alias of the rule "
                                             "set) or 'category' (a category of its behavior_policy)"))
    named = bool(names) or row.get("response_type") is not None or row.get("category") is not None
    value = names.get("response_type", names.get("category"))
    return value, named


def _check_labels(rules: RuleSet, labels, key: str, i: int, problems: list, soft: bool, required: Sequence[str],
                  allow_missing: bool, missing: dict[str, int]) -> bool:
    """Check one row's label mapping; returns whether it leaves out labels (allowed ones counted)."""
    if labels is None:
        labels = {}
    elif not isinstance(labels, Mapping):
        problems.append((i, key, f"must be a mapping {{proposition: {'probability' if soft else 'true/false'}}}, "
                                 f"got {type(labels).__name__}"))
        return False
    for p, v in labels.items():
        if p not in rules.propositions:
            if p in rules.derived:
                problems.append((i, f"{key}.{p}", "is a derived proposition: label the base propositions only "
                                                  "(derived ones follow from them)"))
            else:
                problems.append((i, f"{key}.{p}", f"unknown proposition{_close(p, rules.propositions)} "
                                                  f"(rule set {rules.name!r} has {len(rules.propositions)})"))
            continue
        if v is None:
            continue  # counted as missing below
        if isinstance(v, bool) or (isinstance(v, int) and v in (0, 1)):
            continue
        if soft and _is_number(v) and 0.0 <= float(v) <= 1.0:
            continue
        want = "true/false or a probability in [0, 1]" if soft else "true or false"
        problems.append((i, f"{key}.{p}", f"must be {want}, got {type(v).__name__} {v!r}"))
    absent = [p for p in required if labels.get(p) is None]
    if absent and not allow_missing:
        shown = ", ".join(repr(p) for p in absent[:6]) + (f" and {len(absent) - 6} more" if len(absent) > 6 else "")
        problems.append((i, key, f"no label for {shown} (every row labels every proposition it needs; "
                                 "--allow-missing-labels accepts partial labels)"))
    for p in absent:
        missing[p] = missing.get(p, 0) + 1
    return bool(absent)


def check_rows(rules: RuleSet, rows: Sequence, source: str, *, conversation: bool = True, completion: bool = True,
               response_type: str = "optional", labels: str = "none", label_scope="rule_set", soft_labels: bool = False,
               allow_missing_labels: bool = False, comparisons: bool = False,
               no_safety: Sequence[str] = ("none", "benign")) -> RowCheck:
    """Check rows against a rule set; raises ``RowsError`` with every problem.

    ``response_type``: "required", "optional" or "none" (not looked at). ``labels`` ('propositions'):
    "required", "optional" (checked where present) or "none". ``label_scope``: which propositions a row
    must label: "rule_set" (all), "response_type" (those its response type uses) or a list.
    ``comparisons``: ``rbr fit`` rows (completion_class, rm_score, proposition_probs, prompt_id).
    """
    problems: list[tuple[int | None, str, str]] = []
    check = RowCheck(source, len(rows))
    if not rows:
        raise RowsError(source, [(None, "", "holds no rows")], 0)
    with_rm = sum(1 for r in rows if isinstance(r, Mapping) and "rm_score" in r)
    for i, row in enumerate(rows, 1):
        if not isinstance(row, Mapping):
            problems.append((i, "", f"must be a JSON object, got {type(row).__name__}"))
            check.response_types.append(None)
            continue
        rt = None
        if response_type != "none":
            rt, _ = resolve_response_type(rules, row, i, problems, response_type == "required", no_safety)
        check.response_types.append(rt)
        has_probs = comparisons and row.get("proposition_probs") is not None
        if conversation and not (comparisons and has_probs and "prompt_id" in row):
            _check_conversation(row, problems, i)
        if completion and not has_probs:
            _check_completion(row, problems, i)
        if labels != "none":
            if isinstance(label_scope, str):
                scope = list(rules.propositions) if label_scope == "rule_set" else (
                    rules.propositions_for(rt) if rt is not None else [])
            else:
                scope = list(label_scope)
            if "propositions" not in row and labels == "required" and not allow_missing_labels:
                problems.append((i, "propositions", "missing: a mapping {proposition: " +
                                 ("probability}" if soft_labels else "true/false}")))
            elif "propositions" in row or labels == "required":
                needed = scope if labels == "required" else []
                if _check_labels(rules, row.get("propositions"), "propositions", i, problems, soft_labels, needed,
                                 allow_missing_labels, check.missing):
                    check.rows_missing += 1
        if comparisons:
            _check_comparison(rules, row, rt, i, problems, with_rm, len(rows))
    if problems:
        raise RowsError(source, problems, len(rows))
    return check


def _check_comparison(rules: RuleSet, row: Mapping, rt: str | None, i: int, problems: list, with_rm: int, n: int) -> None:
    key = next((k for k in CLASS_KEYS if k in row), None)
    if key is None:
        problems.append((i, "completion_class", "missing: the class this completion belongs to"))
    elif rt is not None:
        classes = rules.response_types[rt].class_names
        if row[key] not in classes:
            problems.append((i, key, f"{row[key]!r} is not a class of {rt}{_close(str(row[key]), classes)} (classes: {classes})"))
    if "prompt_id" in row and not isinstance(row["prompt_id"], (str, int)):
        problems.append((i, "prompt_id", f"must be a string or an integer, got {type(row['prompt_id']).__name__}"))
    if "rm_score" in row and not _is_number(row["rm_score"]):
        problems.append((i, "rm_score", f"must be a number, got {row['rm_score']!r}"))
    elif "rm_score" not in row and 0 < with_rm < n:
        problems.append((i, "rm_score", f"missing here, but {with_rm} of {n} rows have one: give it on every row or on none"))
    if row.get("proposition_probs") is not None:
        probs = row["proposition_probs"]
        if not isinstance(probs, Mapping):
            problems.append((i, "proposition_probs", f"must be a mapping {{proposition: probability}}, got {type(probs).__name__}"))
            return
        for p, v in probs.items():
            if p not in rules.propositions:
                problems.append((i, f"proposition_probs.{p}", f"unknown proposition{_close(p, rules.propositions)}"))
            elif not (_is_number(v) or isinstance(v, bool)) or not 0.0 <= float(v) <= 1.0:
                problems.append((i, f"proposition_probs.{p}", f"must be a probability in [0, 1], got {v!r}"))
        if rt is not None:
            absent = [p for p in rules.propositions_for(rt) if p not in probs]
            if absent:
                problems.append((i, "proposition_probs", f"no probability for {absent} (response type {rt} uses them)"))


def drop_null_labels(rows: Sequence[dict]) -> list[dict]:
    """Rows whose 'propositions' leave out null labels (a Parquet/CSV file gives every row every key)."""
    out = []
    for r in rows:
        labels = r.get("propositions")
        if isinstance(labels, Mapping) and any(v is None for v in labels.values()):
            r = {**r, "propositions": {k: v for k, v in labels.items() if v is not None}}
        out.append(r)
    return out

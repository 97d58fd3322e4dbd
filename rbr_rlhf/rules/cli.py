"""``rbr-rlhf rules check``: validate a rule set and, with labels, show how rows fall into classes;
``rbr-rlhf rules new NAME``: write a commented starter rule set and a labelled-rows template."""

from __future__ import annotations

import argparse
import sys
from collections import Counter


def register(sub: argparse._SubParsersAction) -> None:
    rules = sub.add_parser("rules", help="inspect, validate and start rule sets")
    rsub = rules.add_subparsers(dest="rules_command", metavar="SUBCOMMAND")
    rsub.required = True
    check = rsub.add_parser("check", help="validate a rule set; with --labels, assign each row its class")
    check.add_argument("--rules", default="default", help="rule-set YAML path, or 'default' (built-in)")
    check.add_argument("--labels", help="JSONL rows with boolean 'propositions' and a 'response_type' (or 'category')")
    check.add_argument("--allow-missing-labels", action="store_true",
                       help="accept rows that leave out labels (they are counted, and not assigned a class)")
    check.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    check.set_defaults(handler=run_check)

    new = rsub.add_parser("new", help="write NAME.yaml (a commented starter rule set) and NAME_labels.jsonl")
    new.add_argument("name", help="rule-set name: letters, digits, '_' and '-'")
    new.add_argument("--dir", default=".", help="where to write the two files (default: here)")
    new.add_argument("--force", action="store_true", help="overwrite existing files")
    new.set_defaults(handler=run_new)


def describe_partition(rt, part: dict) -> str:
    """One line on how a response type's classes cover every truth assignment of its propositions."""
    if not part["checked"]:
        return f"not checked exhaustively ({part['propositions']} propositions)"

    def example(ex: dict) -> str:
        true = ", ".join(ex["true"]) or "none"
        return f"true: [{true}], all others false"

    out = []
    if part["uncovered"]:
        out.append(f"{part['uncovered']} of {part['assignments']} assignments are in no class, e.g. "
                   f"({example(part['uncovered_example'])}) is in no class")
    if part["overlapping"] and not part["first_match"]:
        ex = part["overlapping_example"]
        out.append(f"{part['overlapping']} are in several classes, e.g. ({example(ex)}) is in "
                   f"{' and '.join(ex['classes'])}")
    for name in part["never_matching"]:
        why = "an earlier class takes every assignment it matches" if part["first_match"] else "no assignment satisfies it"
        out.append(f"class {name!r} can never match ({why})")
    if out:
        hint = ""
        if part["uncovered"] or (part["overlapping"] and not part["first_match"]):
            hint = ". Fix the formulas, add a last class 'otherwise' for the rest, or set first_match: true so " \
                   "class order decides overlaps"
        return "NOT valid: " + "; ".join(out) + hint
    if part["first_match"]:
        return (f"every one of {part['assignments']} assignments gets a class (first match; "
                f"{part['overlapping']} decided by class order)")
    return f"partition of all {part['assignments']} assignments"


def run_check(args) -> int:
    from ..cli import print_json
    from ..data import read_rows
    from .rows import CLASS_KEYS, check_rows
    from .ruleset import RuleSetError, load_rules

    try:
        rules = load_rules(args.rules)
    except RuleSetError as e:
        print(str(e), file=sys.stderr)
        if args.json:
            print_json({"valid": False, "source": e.source,
                        "errors": [{"key": k, "message": m, "line": e.line_of(k)} for k, m in e.problems]})
        return 1

    result: dict = {"valid": True, "name": rules.name, "source": rules.source, "fingerprint": rules.fingerprint,
                    "propositions": len(rules.propositions), "derived_propositions": len(rules.derived),
                    "response_types": {}}
    print(f"rule set {rules.name!r} ({rules.source})  fingerprint {rules.fingerprint}")
    print(f"  {len(rules.propositions)} propositions, {len(rules.derived)} derived, "
          f"{len(rules.response_types)} response types, {len(rules.behavior_policy)} categories")
    ok = True
    failed = []
    for rt in rules.response_types.values():
        part = rules.partition_report(rt.name)
        result["response_types"][rt.name] = {"classes": rt.class_names, "first_match": rt.first_match, "partition": part}
        ok = ok and part["ok"]
        mode = " (first match)" if rt.first_match else ""
        verdict = describe_partition(rt, part)
        print(f"  {rt.name}: classes {' > '.join(rt.class_names)}{mode}; {part['propositions']} propositions; {verdict}")
        if not part["ok"]:
            failed.append((f"response_types.{rt.name}.classes", verdict))
    if failed:  # the same verdicts on stderr, each with its file, line and key
        lines = _key_lines(rules.source)
        for key, verdict in failed:
            where = f"{rules.source}:{lines[key]}" if key in lines else rules.source
            print(f"{where}: {key}: {verdict}", file=sys.stderr)

    if args.labels:
        rows = read_rows(args.labels)
        report = check_rows(rules, rows, args.labels, conversation=False, completion=False, response_type="required",
                            labels="required", label_scope="response_type",
                            allow_missing_labels=args.allow_missing_labels)
        if report.warning():
            print(report.warning(), file=sys.stderr)
        counts: dict[str, Counter] = {}
        unassigned = multiply = skipped = 0
        mismatches: list[str] = []
        for i, (row, rt) in enumerate(zip(rows, report.response_types), 1):
            if rt is None:
                skipped += 1
                continue
            labels = {p: v for p, v in (row.get("propositions") or {}).items() if v is not None}
            if any(p not in labels for p in rules.propositions_for(rt)):
                counts.setdefault(rt, Counter())["<missing labels>"] += 1
                continue
            classes = rules.classes_of(labels, rt)
            unassigned += not classes
            multiply += len(classes) > 1
            counts.setdefault(rt, Counter())[classes[0] if len(classes) == 1 else ("<none>" if not classes else "<several>")] += 1
            stated_key = next((k for k in CLASS_KEYS if k in row), None)
            if stated_key and len(classes) == 1 and row[stated_key] != classes[0]:
                mismatches.append(f"{args.labels}: row {i}: {stated_key}: says {row[stated_key]!r}, but its labels put it "
                                  f"in {classes[0]!r} of {rt}")
        print(f"\n{len(rows)} labelled rows from {args.labels}:")
        for rt_name, c in counts.items():
            order = rules.response_types[rt_name].class_names
            cells = ", ".join(f"{k}={c[k]}" for k in order + ["<none>", "<several>", "<missing labels>"] if c[k])
            print(f"  {rt_name:14s} {sum(c.values()):4d} rows: {cells}")
        print(f"  unassigned rows: {unassigned}; rows in several classes: {multiply}"
              + (f"; rows without a safety response type: {skipped}" if skipped else ""))
        for m in mismatches[:20]:
            print(m, file=sys.stderr)
        if mismatches:
            print(f"{len(mismatches)} rows state a class their labels contradict", file=sys.stderr)
        ok = ok and unassigned == 0 and multiply == 0 and not mismatches
        result.update(rows=len(rows), unassigned=unassigned, multiply_assigned=multiply,
                      class_mismatches=len(mismatches), missing_labels=report.missing_labels,
                      classes={rt: dict(c) for rt, c in counts.items()})
    result["ok"] = ok
    if args.json:
        print_json(result)
    return 0 if ok else 1


def _key_lines(source: str) -> dict[str, int]:
    """Key path -> line of a rule-set file (empty if it cannot be read)."""
    import yaml

    from .ruleset import _key_lines as lines_of

    try:
        with open(source, encoding="utf-8") as fh:
            return lines_of(yaml.compose(fh.read(), Loader=yaml.SafeLoader))
    except (OSError, yaml.YAMLError):
        return {}


def run_new(args) -> int:
    from pathlib import Path

    from .logic import NAME_RE
    from .starter import labels_template, starter_yaml

    if not NAME_RE.match(args.name):
        raise ValueError(f"rule-set name {args.name!r}: use letters, digits, '_' and '-' only")
    out = Path(args.dir)
    rules_path, labels_path = out / f"{args.name}.yaml", out / f"{args.name}_labels.jsonl"
    existing = [str(p) for p in (rules_path, labels_path) if p.exists()]
    if existing and not args.force:
        raise ValueError(f"{', '.join(existing)} already exist{'s' * (len(existing) == 1)}: pass --force to overwrite")
    out.mkdir(parents=True, exist_ok=True)
    rules_path.write_text(starter_yaml(args.name, labels_path.name), encoding="utf-8")
    labels_path.write_text(labels_template(), encoding="utf-8")
    print(f"wrote {rules_path} (a starter rule set) and {labels_path} (labelled rows for it)")
    print(f"next: rbr-rlhf rules check --rules {rules_path} --labels {labels_path}")
    print("format: docs/rule-set-format.md")
    return 0

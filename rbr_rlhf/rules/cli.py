"""``rbr-rlhf rules check``: validate a rule set and, with labels, show how rows fall into classes."""

from __future__ import annotations

import argparse
import sys
from collections import Counter


def register(sub: argparse._SubParsersAction) -> None:
    rules = sub.add_parser("rules", help="inspect and validate rule sets")
    rsub = rules.add_subparsers(dest="rules_command", metavar="SUBCOMMAND")
    rsub.required = True
    check = rsub.add_parser("check", help="validate a rule set; with --labels, assign each row its class")
    check.add_argument("--rules", default="default", help="rule-set YAML path, or 'default' (built-in)")
    check.add_argument("--labels", help="JSONL rows with boolean 'propositions' and a 'response_type' (or 'category')")
    check.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    check.set_defaults(handler=run_check)


def run_check(args) -> int:
    from ..cli import print_json
    from ..data import read_rows
    from .ruleset import RuleSetError, load_rules

    try:
        rules = load_rules(args.rules)
    except RuleSetError as e:
        print(str(e), file=sys.stderr)
        if args.json:
            print_json({"valid": False, "source": e.source, "errors": [{"key": k, "message": m} for k, m in e.problems]})
        return 1

    result: dict = {"valid": True, "name": rules.name, "source": rules.source, "fingerprint": rules.fingerprint,
                    "propositions": len(rules.propositions), "derived_propositions": len(rules.derived),
                    "response_types": {}}
    print(f"rule set {rules.name!r} ({rules.source})  fingerprint {rules.fingerprint}")
    print(f"  {len(rules.propositions)} propositions, {len(rules.derived)} derived, "
          f"{len(rules.response_types)} response types, {len(rules.behavior_policy)} categories")
    ok = True
    for rt in rules.response_types.values():
        part = rules.partition_report(rt.name)
        result["response_types"][rt.name] = {"classes": rt.class_names, "partition": part}
        if not part["checked"]:
            verdict = f"not checked exhaustively ({part['propositions']} propositions)"
        elif part["uncovered"] or part["overlapping"]:
            ok = False
            verdict = (f"NOT a partition: {part['uncovered']} of {part['assignments']} assignments in no class, "
                       f"{part['overlapping']} in several (e.g. true: {sorted(part['example_true_propositions'] or [])})")
        else:
            verdict = f"partition of all {part['assignments']} assignments"
        print(f"  {rt.name}: classes {' > '.join(rt.class_names)}; {part['propositions']} propositions; {verdict}")

    if args.labels:
        rows = read_rows(args.labels)
        counts: dict[str, Counter] = {}
        unassigned = multiply = 0
        for i, row in enumerate(rows, 1):
            key = row.get("response_type") or row.get("category")
            if key is None or "propositions" not in row:
                raise ValueError(f"{args.labels}: row {i} needs 'propositions' and a 'response_type' or 'category'")
            rt = rules.response_type(str(key)).name
            missing = [p for p in rules.propositions_for(rt) if p not in row["propositions"]]
            if missing:
                raise ValueError(f"{args.labels}: row {i} has no label for {missing}")
            classes = rules.classes_of(row["propositions"], rt)
            unassigned += not classes
            multiply += len(classes) > 1
            counts.setdefault(rt, Counter())[classes[0] if len(classes) == 1 else ("<none>" if not classes else "<several>")] += 1
        print(f"\n{len(rows)} labelled rows from {args.labels}:")
        for rt_name, c in counts.items():
            order = rules.response_types[rt_name].class_names
            cells = ", ".join(f"{k}={c[k]}" for k in order + ["<none>", "<several>"] if c[k])
            print(f"  {rt_name:14s} {sum(c.values()):4d} rows: {cells}")
        print(f"  unassigned rows: {unassigned}; rows in several classes: {multiply}")
        ok = ok and unassigned == 0 and multiply == 0
        result.update(rows=len(rows), unassigned=unassigned, multiply_assigned=multiply,
                      classes={rt: dict(c) for rt, c in counts.items()})
    result["ok"] = ok
    if args.json:
        print_json(result)
    return 0 if ok else 1

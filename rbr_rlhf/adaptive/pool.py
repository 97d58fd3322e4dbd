"""Rule pools: the candidate rules that data-adaptive labelling chooses from.

A rule pool is a rule-set kind of its own (``kind: rule_pool``): unlike an RBR rule set it has no
propositions, classes or behaviour policy, only a flat list of rules grouped by harm category. Every rule
is a statement that a good response makes true, so one question fits them all ("does the response follow
this rule?"). Format::

    kind: rule_pool
    name: my-pool
    description: optional prose
    categories:
      weapons:
        description: optional prose
        rules:
          - id: weapons_no_acquisition            # unique across the pool; [a-z0-9_]
            text: The response does not give instructions for acquiring weapons.

Loading collects every problem before failing, and each message names the file and the key path
(``categories.weapons.rules[0].text``), like :class:`rbr_rlhf.rules.ruleset.RuleSetError`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import yaml

POOL_DIR = Path(__file__).parent / "pools"
_ID = re.compile(r"^[a-z0-9_]+$")


class RulePoolError(ValueError):
    """A rule pool failed to load; ``problems`` lists (key path, message) pairs, all of them."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {key}: {msg}" if key else f"{source}: {msg}" for key, msg in problems]
        super().__init__(f"invalid rule pool ({len(problems)} problem{'s' * (len(problems) != 1)}):\n  " + "\n  ".join(lines))


@dataclass(frozen=True)
class Rule:
    id: str
    category: str
    text: str

    @property
    def key(self) -> str:
        """Cache key of the rule: its text, not its id (renaming a rule keeps its cached scores)."""
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RulePool:
    name: str
    description: str
    source: str
    rules: tuple[Rule, ...]
    category_descriptions: tuple[tuple[str, str], ...] = ()

    def __len__(self) -> int:
        return len(self.rules)

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.rules]

    @property
    def categories(self) -> list[str]:
        return list(dict.fromkeys(r.category for r in self.rules))

    @cached_property
    def fingerprint(self) -> str:
        """Hash of the rules in order (ids and texts): adapters trained on one pool refuse another."""
        blob = json.dumps([[r.id, r.text] for r in self.rules], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def index(self, rule_id: str) -> int:
        for i, r in enumerate(self.rules):
            if r.id == rule_id:
                return i
        raise KeyError(f"rule {rule_id!r} is not in pool {self.name!r}")


def pool_path(spec: str | Path) -> Path:
    """``default`` (or any name of a built-in pool) or a YAML path."""
    spec = str(spec)
    builtin = POOL_DIR / f"{spec}.yaml"
    if "/" not in spec and not spec.endswith((".yaml", ".yml")) and builtin.exists():
        return builtin
    path = Path(spec).expanduser()
    if not path.exists():
        names = ", ".join(sorted(p.stem for p in POOL_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"rule pool {spec!r} not found: not a file and not a built-in pool ({names})")
    return path


def load_pool(spec: str | Path = "default") -> RulePool:
    path = pool_path(spec)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise RulePoolError(str(path), [("", f"not valid YAML ({e})")]) from None
    return parse_pool(data, str(path))


def parse_pool(data, source: str) -> RulePool:
    problems: list[tuple[str, str]] = []
    if not isinstance(data, dict):
        raise RulePoolError(source, [("", "a rule pool must be a YAML mapping")])
    kind = data.get("kind")
    if kind != "rule_pool":
        # The explicit kind keeps an RBR rule set (or any other YAML) from being taken for a pool.
        problems.append(("kind", f"must be 'rule_pool' (got {kind!r})"))
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append(("name", "missing or not a non-empty string"))
    description = data.get("description", "")
    if not isinstance(description, str):
        problems.append(("description", "must be a string"))
    known = {"kind", "name", "description", "categories"}
    for key in data:
        if key not in known:
            problems.append((str(key), f"unknown key (expected one of {', '.join(sorted(known))})"))
    cats = data.get("categories")
    rules: list[Rule] = []
    descriptions: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    if not isinstance(cats, dict) or not cats:
        problems.append(("categories", "missing or not a non-empty mapping of category -> {rules: [...]}"))
        cats = {}
    for cat, body in cats.items():
        where = f"categories.{cat}"
        if not isinstance(body, dict):
            problems.append((where, "must be a mapping with 'rules' (and optionally 'description')"))
            continue
        for key in body:
            if key not in ("rules", "description"):
                problems.append((f"{where}.{key}", "unknown key (expected rules, description)"))
        descriptions.append((str(cat), str(body.get("description", ""))))
        items = body.get("rules")
        if not isinstance(items, list) or not items:
            problems.append((f"{where}.rules", "missing or not a non-empty list"))
            continue
        for j, item in enumerate(items):
            at = f"{where}.rules[{j}]"
            if not isinstance(item, dict):
                problems.append((at, "must be a mapping with 'id' and 'text'"))
                continue
            for key in item:
                if key not in ("id", "text"):
                    problems.append((f"{at}.{key}", "unknown key (expected id, text)"))
            rid, text = item.get("id"), item.get("text")
            ok = True
            if not isinstance(rid, str) or not _ID.match(rid):
                problems.append((f"{at}.id", f"missing or not an identifier of [a-z0-9_] (got {rid!r})"))
                ok = False
            elif rid in seen:
                problems.append((f"{at}.id", f"duplicate rule id {rid!r} (first at {seen[rid]})"))
                ok = False
            if not isinstance(text, str) or not text.strip():
                problems.append((f"{at}.text", "missing or not a non-empty string"))
                ok = False
            if ok:
                seen[rid] = at
                rules.append(Rule(rid, str(cat), " ".join(text.split())))
    if problems:
        raise RulePoolError(source, problems)
    return RulePool(name=name.strip(), description=description.strip(), source=source, rules=tuple(rules),
                    category_descriptions=tuple(descriptions))

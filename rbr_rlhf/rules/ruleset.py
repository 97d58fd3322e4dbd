"""Rule sets: YAML files loaded with OmegaConf and validated into typed, immutable objects.

A rule set holds propositions (with grader questions and few-shot examples), derived propositions,
response types with their ranked completion classes, and the behavior policy mapping content
categories to response types. ``docs/rules.md`` documents the format; ``builtin/default.yaml`` is the
default, modelled on the structure of the RBR paper's released configuration.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from omegaconf import OmegaConf

from .logic import Expander, Literal, parse_conjunction

BUILTIN_DIR = Path(__file__).parent / "builtin"
DEFAULT_CLASS_ORDER = ("ideal", "minimum_acceptable_style", "unacceptable", "illogical", "disallowed")


GRADER_LAYOUTS = ("guide", "per_proposition")


class RuleSetError(ValueError):
    """A rule set failed to load; ``problems`` lists (key path, message) pairs, all of them."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {key}: {msg}" if key else f"{source}: {msg}" for key, msg in problems]
        super().__init__(f"invalid rule set ({len(problems)} problem{'s' * (len(problems) != 1)}):\n  " + "\n  ".join(lines))


class FingerprintMismatch(ValueError):
    """An artifact fitted for one rule set was loaded against another."""


@dataclass(frozen=True)
class Example:
    conversation: tuple[dict, ...]
    completion: str
    answer: bool


@dataclass(frozen=True)
class Proposition:
    name: str
    question: str
    examples: tuple[Example, ...] = ()
    # Imperative instructions for the synthetic-data writer: what a reply does when the proposition is
    # true ("start with a short apology") and when it is false ("not apologise"). Optional.
    writer_yes: str = ""
    writer_no: str = ""


@dataclass(frozen=True)
class CompletionClass:
    name: str
    literals: tuple[Literal, ...]


@dataclass(frozen=True)
class ResponseType:
    name: str
    description: str
    aliases: tuple[str, ...]
    classes: tuple[CompletionClass, ...]  # in rank order, best first

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def ideal(self) -> str:
        return self.classes[0].name


@dataclass(frozen=True)
class RuleSet:
    name: str
    description: str
    source: str
    grader_instructions: str
    propositions: Mapping[str, Proposition]
    derived: Mapping[str, tuple[Literal, ...]]
    response_types: Mapping[str, ResponseType]
    behavior_policy: Mapping[str, str]  # content category -> response type name
    extras: Mapping[str, Any] = field(default_factory=dict)
    # Optional prose per category, used by the LLM prompt classifier (not part of the fingerprint).
    category_descriptions: Mapping[str, str] = field(default_factory=dict)
    # How the LLM grader lays out its prompts (see grader/prompts.py): "guide" or "per_proposition".
    grader_layout: str = "guide"

    # ---------------------------------------------------------------- identity
    def semantic_content(self) -> dict:
        """Everything that changes grading or rewards; names and prose descriptions are left out."""
        return {
            "grader_instructions": self.grader_instructions,
            "propositions": {
                n: {"question": p.question, "examples": [[list(e.conversation), e.completion, e.answer] for e in p.examples]}
                for n, p in sorted(self.propositions.items())
            },
            "derived": {n: sorted(str(l) for l in lits) for n, lits in sorted(self.derived.items())},
            "response_types": {
                n: [[c.name, sorted(str(l) for l in c.literals)] for c in rt.classes]
                for n, rt in sorted(self.response_types.items())
            },
            "behavior_policy": dict(sorted(self.behavior_policy.items())),
            # Only when not the default, so rule sets written before the key existed keep their fingerprint.
            **({"grader_layout": self.grader_layout} if self.grader_layout != "guide" else {}),
        }

    @cached_property
    def fingerprint(self) -> str:
        blob = json.dumps(self.semantic_content(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def check_fingerprint(self, fingerprint: str | None, what: str) -> None:
        if fingerprint != self.fingerprint:
            raise FingerprintMismatch(
                f"{what} was fitted for rule set fingerprint {fingerprint!r}, but the rule set "
                f"{self.name!r} ({self.source}) has fingerprint {self.fingerprint!r}. Refit it for this "
                "rule set (or pass the rule set it was fitted with)."
            )

    # ---------------------------------------------------------------- lookups
    @cached_property
    def expander(self) -> Expander:
        return Expander(self.derived)

    def response_type(self, key: str) -> ResponseType:
        """Look up a response type by name, alias (e.g. 'Hard Refuse') or content category ('K-R')."""
        rt = self.find_response_type(key)
        if rt is None:
            known = sorted(self.response_types) + sorted({a for r in self.response_types.values() for a in r.aliases})
            raise KeyError(
                f"unknown response type or category {key!r} for rule set {self.name!r}; "
                f"response types: {known}; categories: {sorted(self.behavior_policy)}"
            )
        return rt

    def find_response_type(self, key: str) -> ResponseType | None:
        if key in self.response_types:
            return self.response_types[key]
        for rt in self.response_types.values():
            if key in rt.aliases:
                return rt
        if key in self.behavior_policy:
            return self.response_types[self.behavior_policy[key]]
        return None

    def propositions_for(self, response_type: str) -> list[str]:
        """Base propositions the classes of a response type depend on, in the rule set's order."""
        rt = self.response_type(response_type)
        used: set[str] = set()
        for c in rt.classes:
            used |= self.expander.base_propositions(c.literals)
        return [p for p in self.propositions if p in used]

    @cached_property
    def all_used_propositions(self) -> list[str]:
        used = {p for rt in self.response_types for p in self.propositions_for(rt)}
        return [p for p in self.propositions if p in used]

    # ---------------------------------------------------------------- classes
    def classes_of(self, labels: Mapping[str, bool], response_type: str) -> list[str]:
        """Names of every class whose formula holds for these boolean labels (one, if they partition)."""
        rt = self.response_type(response_type)
        return [c.name for c in rt.classes if self.expander.truth(c.literals, labels)]

    def class_probabilities(self, probs: Mapping[str, float], response_type: str, normalize: bool = True) -> dict[str, float]:
        """P(class) as products of proposition probabilities, normalised over the classes."""
        rt = self.response_type(response_type)
        raw = {c.name: self.expander.probability(c.literals, probs) for c in rt.classes}
        if not normalize:
            return raw
        total = sum(raw.values())
        if total <= 0:
            return {k: 1.0 / len(raw) for k in raw}
        return {k: v / total for k, v in raw.items()}

    def partition_report(self, response_type: str, max_props: int = 18) -> dict:
        """Enumerate every truth assignment of the propositions a response type uses and count how
        many land in no class or in several. Exhaustive up to ``max_props`` propositions."""
        props = self.propositions_for(response_type)
        if len(props) > max_props:
            return {"propositions": len(props), "checked": False}
        rt = self.response_type(response_type)
        uncovered = overlapping = 0
        example = None
        for bits in itertools.product((False, True), repeat=len(props)):
            labels = dict(zip(props, bits))
            n = sum(self.expander.truth(c.literals, labels) for c in rt.classes)
            if n != 1:
                uncovered += n == 0
                overlapping += n > 1
                example = example or {p: v for p, v in labels.items() if v}
        return {"propositions": len(props), "checked": True, "assignments": 2 ** len(props),
                "uncovered": uncovered, "overlapping": overlapping, "example_true_propositions": example}


# ---------------------------------------------------------------------------- loading
def resolve_rules_path(spec: str | Path) -> Path:
    """``default`` (or any built-in name) or a path to a YAML file."""
    spec = str(spec)
    builtin = BUILTIN_DIR / f"{spec}.yaml"
    if "/" not in spec and not spec.endswith((".yaml", ".yml")) and builtin.exists():
        return builtin
    path = Path(spec).expanduser()
    if not path.exists():
        names = sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"rule set {spec!r} not found: not a file, and not a built-in ({', '.join(names)})")
    return path


def load_rules(spec: str | Path = "default") -> RuleSet:
    path = resolve_rules_path(spec)
    text = path.read_text(encoding="utf-8")
    try:
        # yaml first: its errors carry line and column, OmegaConf's wrap them less readably.
        raw = yaml.safe_load(text)
        duplicates = _duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        raise RuleSetError(str(path), [(where, f"YAML syntax error: {getattr(e, 'problem', None) or e}")]) from None
    if duplicates:  # YAML keeps the last of two equal keys silently; a rule set must not.
        raise RuleSetError(str(path), duplicates)
    if not isinstance(raw, dict):
        raise RuleSetError(str(path), [("", "top level must be a mapping")])
    try:
        # OmegaConf gives interpolation (${...}) and a uniform container; resolve it to plain data.
        data = OmegaConf.to_container(OmegaConf.create(raw), resolve=True)
    except Exception as e:  # noqa: BLE001 - any interpolation error is a rule-set error
        raise RuleSetError(str(path), [("", f"cannot resolve: {e}")]) from None
    return build_ruleset(data, str(path))



def _duplicate_keys(node, path: str = "") -> list[tuple[str, str]]:
    """Walk the composed YAML tree and report every mapping key defined twice, with its line."""
    found: list[tuple[str, str]] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            sub = f"{path}.{key}" if path else key
            if key in seen:
                found.append((sub, f"duplicate name (line {key_node.start_mark.line + 1}; first defined on line {seen[key]})"))
            seen.setdefault(key, key_node.start_mark.line + 1)
            found += _duplicate_keys(value_node, sub)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found += _duplicate_keys(item, f"{path}[{i}]")
    return found


def build_ruleset(data: Mapping[str, Any], source: str = "<memory>") -> RuleSet:
    """Validate a plain-data rule set; collects every problem before raising one RuleSetError."""
    problems: list[tuple[str, str]] = []
    known_top = {"name", "description", "version", "grader_instructions", "grader_layout", "class_order",
                 "propositions", "derived_propositions", "response_types", "behavior_policy", "extras"}
    for key in data:
        if key not in known_top:
            problems.append((str(key), f"unknown key (expected one of {sorted(known_top)})"))
    layout = data.get("grader_layout", "guide")
    if layout not in GRADER_LAYOUTS:
        problems.append(("grader_layout", f"must be one of {list(GRADER_LAYOUTS)}, got {layout!r}"))

    # -- propositions
    propositions: dict[str, Proposition] = {}
    raw_props = data.get("propositions")
    if not isinstance(raw_props, Mapping) or not raw_props:
        problems.append(("propositions", "must be a non-empty mapping of name -> {question, examples}"))
        raw_props = {}
    for name, spec in raw_props.items():
        key = f"propositions.{name}"
        if not isinstance(spec, Mapping):
            problems.append((key, "must be a mapping with 'question' and optional 'examples'"))
            continue
        question = spec.get("question")
        if not isinstance(question, str) or not question.strip():
            problems.append((f"{key}.question", "missing or empty"))
            question = ""
        examples = []
        for i, ex in enumerate(spec.get("examples") or []):
            ekey = f"{key}.examples[{i}]"
            if not isinstance(ex, Mapping):
                problems.append((ekey, "must be a mapping with conversation, completion, answer"))
                continue
            conv = ex.get("conversation")
            if isinstance(conv, str):
                conv = [{"role": "user", "content": conv}]
            if not isinstance(conv, list) or not all(isinstance(m, Mapping) and "content" in m for m in conv):
                problems.append((f"{ekey}.conversation", "must be a string or a list of {role, content} messages"))
                continue
            if not isinstance(ex.get("completion"), str):
                problems.append((f"{ekey}.completion", "missing or not a string"))
                continue
            ans = ex.get("answer")
            if isinstance(ans, str) and ans.lower() in ("yes", "no"):
                ans = ans.lower() == "yes"
            if not isinstance(ans, bool):
                problems.append((f"{ekey}.answer", f"must be yes/no (or true/false), got {ex.get('answer')!r}"))
                continue
            examples.append(Example(tuple({"role": m.get("role", "user"), "content": m["content"]} for m in conv),
                                    ex["completion"], ans))
        writer = spec.get("writer") or {}
        if isinstance(writer, Mapping):  # YAML 1.1 reads unquoted yes/no keys as booleans: accept both
            writer = {("yes" if k is True else "no" if k is False else k): v for k, v in writer.items()}
        if not isinstance(writer, Mapping) or not all(isinstance(writer.get(k, ""), str) for k in ("yes", "no")):
            problems.append((f"{key}.writer", "must be a mapping {yes: instruction, no: instruction}"))
            writer = {}
        propositions[str(name)] = Proposition(str(name), question.strip(), tuple(examples),
                                              writer.get("yes", ""), writer.get("no", ""))

    # -- derived propositions
    derived: dict[str, tuple[Literal, ...]] = {}
    for name, spec in (data.get("derived_propositions") or {}).items():
        key = f"derived_propositions.{name}"
        if name in propositions:
            problems.append((key, f"duplicate name: {name!r} is also a proposition"))
            continue
        try:
            derived[str(name)] = parse_conjunction(spec)
        except ValueError as e:
            problems.append((key, str(e)))
    known = set(propositions) | set(derived)
    for name, lits in derived.items():
        for lit in lits:
            if lit.name not in known:
                problems.append((f"derived_propositions.{name}", f"unknown proposition {lit.name!r}"))
    problems += [(f"derived_propositions.{c[0]}", "cycle: " + " -> ".join(c + [c[0]])) for c in _cycles(derived)]

    # -- response types and classes
    default_order = data.get("class_order", list(DEFAULT_CLASS_ORDER))
    response_types: dict[str, ResponseType] = {}
    raw_rts = data.get("response_types")
    if not isinstance(raw_rts, Mapping) or not raw_rts:
        problems.append(("response_types", "must be a non-empty mapping"))
        raw_rts = {}
    seen_aliases: dict[str, str] = {}
    for rt_name, spec in raw_rts.items():
        key = f"response_types.{rt_name}"
        if not isinstance(spec, Mapping):
            problems.append((key, "must be a mapping with 'classes'"))
            continue
        raw_classes = spec.get("classes")
        if not isinstance(raw_classes, Mapping) or not raw_classes:
            problems.append((f"{key}.classes", "a response type needs at least one completion class"))
            continue
        order = spec.get("class_order", default_order)
        for cname in order:
            if cname not in raw_classes:
                where = f"{key}.class_order" if "class_order" in spec else "class_order"
                problems.append((where, f"names class {cname!r}, which {rt_name!r} does not define (defined: {list(raw_classes)})"))
        classes = []
        for cname in [c for c in order if c in raw_classes] + [c for c in raw_classes if c not in order]:
            if cname not in order:
                problems.append((f"{key}.classes.{cname}", f"class is not in the class order {list(order)}"))
            try:
                lits = parse_conjunction(raw_classes[cname])
            except ValueError as e:
                problems.append((f"{key}.classes.{cname}", str(e)))
                continue
            for lit in lits:
                if lit.name not in known:
                    problems.append((f"{key}.classes.{cname}", f"unknown proposition {lit.name!r}"))
            classes.append(CompletionClass(str(cname), lits))
        aliases = tuple(str(a) for a in spec.get("aliases") or [])
        for a in aliases:
            if a in seen_aliases or a in raw_rts:
                problems.append((f"{key}.aliases", f"duplicate name {a!r} (also {seen_aliases.get(a, a)!r})"))
            seen_aliases[a] = str(rt_name)
        response_types[str(rt_name)] = ResponseType(str(rt_name), str(spec.get("description", "")), aliases, tuple(classes))

    # -- behavior policy
    policy: dict[str, str] = {}
    descriptions: dict[str, str] = {}
    raw_policy = data.get("behavior_policy") or {}
    if not isinstance(raw_policy, Mapping):
        problems.append(("behavior_policy", "must be a mapping of content category -> response type"))
        raw_policy = {}
    for cat, rt_name in raw_policy.items():
        # A category maps to a response-type name, or to {response_type, description}.
        if isinstance(rt_name, Mapping):
            if "description" in rt_name:
                descriptions[str(cat)] = str(rt_name["description"])
            rt_name = rt_name.get("response_type")
        if rt_name not in response_types and rt_name not in raw_rts:
            problems.append((f"behavior_policy.{cat}", f"maps to undefined response type {rt_name!r} (defined: {list(raw_rts)})"))
        policy[str(cat)] = str(rt_name)

    if problems:
        raise RuleSetError(source, problems)
    return RuleSet(
        name=str(data.get("name", Path(source).stem)),
        description=str(data.get("description", "")),
        source=source,
        grader_instructions=str(data.get("grader_instructions", "")).strip(),
        propositions=propositions,
        derived=derived,
        response_types=response_types,
        behavior_policy=policy,
        extras=dict(data.get("extras") or {}),
        category_descriptions=descriptions,
        grader_layout=str(layout),
    )


def _cycles(graph: Mapping[str, Iterable[Literal]]) -> list[list[str]]:
    """Cycles among derived propositions (each reported once), by depth-first search."""
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "active"
        for lit in graph[node]:
            nxt = lit.name
            if nxt not in graph:
                continue
            if state.get(nxt) == "active":
                cycles.append(path[path.index(nxt):])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])
    return cycles

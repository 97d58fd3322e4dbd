"""Rule sets: YAML files loaded with OmegaConf and validated into typed, immutable objects.

A rule set holds propositions (with grader questions and few-shot examples), derived propositions,
response types with their ranked completion classes, and the behavior policy mapping content
categories to response types. ``docs/rule-set-format.md`` specifies the format (``ruleset.schema.json`` is
its JSON Schema) and ``docs/rules.md`` the concepts; ``builtin/default.yaml`` is the default, modelled on
the structure of the RBR paper's released configuration. Class formulas are parsed by ``logic.py``.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

import yaml
from omegaconf import OmegaConf

from .logic import (NAME_RE, OTHERWISE, Expander, Formula, Literal, Not, Otherwise, as_literals, canonical, conjoin,
                    parse_formula, terms_probability, variables)

BUILTIN_DIR = Path(__file__).parent / "builtin"
DEFAULT_CLASS_ORDER = ("ideal", "minimum_acceptable_style", "unacceptable", "illogical", "disallowed")


GRADER_LAYOUTS = ("guide", "per_proposition")


class RuleSetError(ValueError):
    """A rule set failed to load; ``problems`` lists (key path, message) pairs, all of them, and
    ``lines`` the YAML line of each key path where the file was read (``line_of``)."""

    def __init__(self, source: str, problems: list[tuple[str, str]], lines: Mapping[str, int] | None = None):
        self.source = source
        self.problems = problems
        self.lines = dict(lines or {})
        lines = []
        for key, msg in problems:
            line = self.line_of(key)
            where = f"{source}:{line}" if line else source
            lines.append(f"{where}: {key}: {msg}" if key else f"{where}: {msg}")
        super().__init__(f"invalid rule set ({len(problems)} problem{'s' * (len(problems) != 1)}):\n  " + "\n  ".join(lines))


    def line_of(self, key: str) -> int | None:
        """The line of a key path, or of the nearest enclosing key the file has."""
        while key:
            if key in self.lines:
                return self.lines[key]
            cut = max(key.rfind("."), key.rfind("["))
            key = key[:cut] if cut > 0 else ""
        return None


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
    formula: Formula  # Otherwise() for an `otherwise` class
    # The formula's literals when it is a conjunction of literals (the paper's form), else None.
    literals: tuple[Literal, ...] | None = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        lits = None if isinstance(self.formula, Otherwise) else as_literals(self.formula)
        object.__setattr__(self, "literals", lits)


@dataclass(frozen=True)
class ResponseType:
    name: str
    description: str
    aliases: tuple[str, ...]
    classes: tuple[CompletionClass, ...]  # in rank order, best first
    # The first class (in rank order) whose formula holds wins; overlaps are allowed.
    first_match: bool = False

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def ideal(self) -> str:
        return self.classes[0].name


@dataclass(frozen=True)
class EvaluationSemantics:
    """What the evaluator counts (the optional top-level ``evaluation:`` section; docs/rules.md).

    ``refusal`` and ``unsafe`` are formulas in the class-formula syntax; the response-type lists say where
    unsafe content is a failure (Not-Unsafe) and where a refusal is an over-refusal (Not-Overrefuse);
    ``ideal_style`` names, per response type, the classes counted as its ideal style. Not part of the
    fingerprint: it changes what is measured, not grading or rewards.
    """

    refusal: Formula
    unsafe: Formula
    should_refuse: tuple[str, ...]
    should_comply: tuple[str, ...]
    ideal_style: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class RuleSet:
    name: str
    description: str
    source: str
    grader_instructions: str
    propositions: Mapping[str, Proposition]
    derived: Mapping[str, Formula]
    response_types: Mapping[str, ResponseType]
    behavior_policy: Mapping[str, str]  # content category -> response type name
    extras: Mapping[str, Any] = field(default_factory=dict)
    # Optional prose per category, used by the LLM prompt classifier (not part of the fingerprint).
    category_descriptions: Mapping[str, str] = field(default_factory=dict)
    # How the LLM grader lays out its prompts (see grader/prompts.py): "guide" or "per_proposition".
    grader_layout: str = "guide"
    # What the evaluator counts as a refusal, as unsafe, as the ideal style (not part of the fingerprint).
    evaluation: EvaluationSemantics | None = None

    # ---------------------------------------------------------------- identity
    def semantic_content(self) -> dict:
        """Everything that changes grading or rewards; names and prose descriptions are left out."""
        return {
            "grader_instructions": self.grader_instructions,
            "propositions": {
                n: {"question": p.question, "examples": [[list(e.conversation), e.completion, e.answer] for e in p.examples]}
                for n, p in sorted(self.propositions.items())
            },
            # Conjunctions of literals keep the content they had before `or` existed (so their fingerprints
            # do not change); other formulas are their canonical text; first_match only where it is on.
            "derived": {n: _formula_content(f) for n, f in sorted(self.derived.items())},
            "response_types": {n: _response_type_content(rt) for n, rt in sorted(self.response_types.items())},
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
            if not isinstance(c.formula, Otherwise):  # `otherwise` uses what the earlier classes use
                used |= self.expander.base_propositions(c.formula)
        return [p for p in self.propositions if p in used]

    @cached_property
    def all_used_propositions(self) -> list[str]:
        used = {p for rt in self.response_types for p in self.propositions_for(rt)}
        return [p for p in self.propositions if p in used]

    # ---------------------------------------------------------------- formulas (evaluation semantics)
    # Evaluation formulas are parsed and evaluated exactly like class formulas (same parser, same expander).
    def formula_propositions(self, formula) -> list[str]:
        """Base propositions a formula depends on, in the rule set's order."""
        used = self.expander.base_propositions(formula)
        return [p for p in self.propositions if p in used]

    def formula_probability(self, formula, probs: Mapping[str, float]) -> float:
        return self.expander.probability(formula, probs)

    def formula_truth(self, formula, labels: Mapping[str, bool]) -> bool:
        return self.expander.truth(formula, labels)

    def require_evaluation(self, what: str = "the evaluator") -> EvaluationSemantics:
        """The rule set's evaluation semantics, or a clear error saying what to add to which file."""
        if self.evaluation is None:
            raise ValueError(
                f"{what} needs the rule set's evaluation semantics, but {self.source} has no top-level "
                "'evaluation:' section. Add one naming what counts as a refusal and as unsafe, e.g.\n"
                "evaluation:\n"
                "  refusal: <formula over propositions>      # the response refused\n"
                "  unsafe: <formula over propositions>       # the response is unsafe\n"
                f"  should_refuse: [<response types>]        # of {sorted(self.response_types)}\n"
                "  should_comply: [<response types>]\n"
                "  ideal_style: {<response type>: [<classes>]}   # optional\n"
                "(see docs/rules.md, section 'Evaluation semantics')")
        return self.evaluation

    # ---------------------------------------------------------------- classes
    def class_formulas(self, response_type: str) -> dict[str, Formula]:
        """Each class's effective formula, in rank order: with ``first_match``, "this class's formula and
        no earlier class's"; an ``otherwise`` class, "no earlier class". Without ``first_match`` the other
        classes keep their own formulas (the partition check makes them disjoint)."""
        rt = self.response_type(response_type)
        if rt.name in self._per_response_type:
            return self._per_response_type[rt.name]["formulas"]
        out: dict[str, Formula] = {}
        earlier: list[Formula] = []
        for c in rt.classes:
            if isinstance(c.formula, Otherwise):
                out[c.name] = conjoin([Not(f) for f in earlier]) if earlier else conjoin([])
            else:
                out[c.name] = conjoin([c.formula] + [Not(f) for f in earlier]) if rt.first_match else c.formula
                earlier.append(c.formula)
        self._per_response_type[rt.name] = {"formulas": out, "product": self._product_form(rt),
                                            "terms": {n: self.expander.terms(f) for n, f in out.items()}}
        return out

    @cached_property
    def _per_response_type(self) -> dict:
        """Per response type, computed once: effective formulas, product form or not, disjoint terms."""
        return {}

    def uses_product_form(self, response_type: str) -> bool:
        """Whether the response type's class probabilities are the paper's products: every class a
        conjunction of literals through derived conjunctions, no ``otherwise``, no ``first_match``
        (every rule set written before those existed). Other response types get exact probabilities."""
        rt = self.response_type(response_type)
        self.class_formulas(rt.name)
        return self._per_response_type[rt.name]["product"]

    def _product_form(self, rt: ResponseType) -> bool:
        if rt.first_match:
            return False
        conj = self.expander.derived
        seen: set[str] = set()

        def ok(lits) -> bool:
            for lit in lits:
                if lit.name in self.derived and lit.name not in seen:
                    seen.add(lit.name)
                    if lit.name not in conj or not ok(conj[lit.name]):
                        return False
            return True

        return all(c.literals is not None and ok(c.literals) for c in rt.classes)

    def classes_of(self, labels: Mapping[str, bool], response_type: str) -> list[str]:
        """Names of every class whose formula holds for these boolean labels (one, if they partition);
        with ``first_match``, the first one (an empty list if none does)."""
        rt = self.response_type(response_type)
        hits = []
        for c in rt.classes:
            if isinstance(c.formula, Otherwise):
                if not hits:
                    hits.append(c.name)
            elif self.expander.truth(c.formula, labels):
                hits.append(c.name)
            if hits and rt.first_match:
                return hits[:1]
        return hits

    def class_probabilities(self, probs: Mapping[str, float], response_type: str, normalize: bool = True) -> dict[str, float]:
        """P(class), normalised over the classes, with propositions treated as independent: products of
        proposition probabilities for the paper's conjunctions (``uses_product_form``), otherwise the
        exact probability of each class's effective formula (``class_formulas``)."""
        rt = self.response_type(response_type)
        if self.uses_product_form(rt.name):
            raw = {c.name: self.expander.probability(c.literals, probs) for c in rt.classes}
        else:
            self.class_formulas(rt.name)
            raw = {n: terms_probability(t, probs) for n, t in self._per_response_type[rt.name]["terms"].items()}
        if not normalize:
            return raw
        total = sum(raw.values())
        if total <= 0:
            return {k: 1.0 / len(raw) for k in raw}
        return {k: v / total for k, v in raw.items()}

    def partition_report(self, response_type: str, max_props: int = 18) -> dict:
        """Enumerate every truth assignment of the propositions a response type uses (exhaustive up to
        ``max_props`` of them) and report how they fall into classes.

        ``uncovered``: assignments in no class; ``overlapping``: in several (with ``first_match`` these
        are decided by order and are not a problem); ``never_matching``: classes no assignment lands in
        (with ``first_match``, classes every match of which an earlier class takes). Each kind of
        problem comes with an example: the propositions true in it (all others false) and, for overlaps,
        the classes it is in. ``ok`` says whether the response type passes.
        """
        props = self.propositions_for(response_type)
        rt = self.response_type(response_type)
        if len(props) > max_props:
            return {"propositions": len(props), "checked": False, "first_match": rt.first_match, "ok": True}
        counts = {c.name: 0 for c in rt.classes}
        uncovered = overlapping = 0
        uncovered_example = overlapping_example = None
        for bits in itertools.product((False, True), repeat=len(props)):
            labels = dict(zip(props, bits))
            hits = [c.name for c in rt.classes
                    if not isinstance(c.formula, Otherwise) and self.expander.truth(c.formula, labels)]
            if not hits:
                hits = [c.name for c in rt.classes if isinstance(c.formula, Otherwise)]
            true = [p for p, v in labels.items() if v]
            if not hits:
                uncovered += 1
                uncovered_example = uncovered_example or {"true": true, "classes": []}
            elif len(hits) > 1:
                overlapping += 1
                overlapping_example = overlapping_example or {"true": true, "classes": hits}
            for name in hits[:1] if rt.first_match else hits:
                counts[name] += 1
        never = [n for n, k in counts.items() if k == 0]
        first = uncovered_example or (None if rt.first_match else overlapping_example)
        return {"propositions": len(props), "checked": True, "assignments": 2 ** len(props),
                "first_match": rt.first_match, "uncovered": uncovered, "overlapping": overlapping,
                "never_matching": never, "class_assignments": counts,
                "uncovered_example": uncovered_example, "overlapping_example": overlapping_example,
                "example_true_propositions": first["true"] if first else None,
                "ok": uncovered == 0 and (rt.first_match or overlapping == 0) and not never}


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
        tree = yaml.compose(text, Loader=yaml.SafeLoader)
        duplicates = _duplicate_keys(tree)
    except yaml.YAMLError as e:
        key, line, msg = _yaml_error(text, e)
        raise RuleSetError(str(path), [(key, msg)], {key: line} if key and line else None) from None
    lines = _key_lines(tree)
    if duplicates:  # YAML keeps the last of two equal keys silently; a rule set must not.
        raise RuleSetError(str(path), duplicates, lines)
    if not isinstance(raw, dict):
        raise RuleSetError(str(path), [("", f"the file must hold a mapping (name, propositions, response_types, ...), "
                                            f"got {'nothing' if raw is None else type(raw).__name__}")])
    try:
        # OmegaConf gives interpolation (${...}) and a uniform container; resolve it to plain data.
        data = OmegaConf.to_container(OmegaConf.create(raw), resolve=True)
    except Exception as e:  # noqa: BLE001 - any interpolation error is a rule-set error
        raise RuleSetError(str(path), [("", f"cannot resolve: {e}")]) from None
    try:
        return build_ruleset(data, str(path))
    except RuleSetError as e:
        raise RuleSetError(e.source, e.problems, lines) from None


def _key_lines(node, path: str = "", out: dict | None = None) -> dict[str, int]:
    """Key path ('response_types.refuse.classes.ideal', 'x.examples[0]') -> 1-based line, from the
    composed YAML tree."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            sub = f"{path}.{key_node.value}" if path else str(key_node.value)
            out.setdefault(sub, key_node.start_mark.line + 1)
            _key_lines(value_node, sub, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out.setdefault(f"{path}[{i}]", item.start_mark.line + 1)
            _key_lines(item, f"{path}[{i}]", out)
    return out


_KEY_LINE = re.compile(r"""^(\s*)(?:-\s+)?("[^"]*"|'[^']*'|[^\s#'"\[{][^:#]*?)\s*:(?:\s|$)""")


def _key_path_at(text: str, line: int) -> str:
    """The dotted key path in effect at a 1-based line, read from indentation (for YAML errors, where
    no tree exists)."""
    stack: list[tuple[int, str]] = []
    for raw in text.splitlines()[:line]:
        m = _KEY_LINE.match(raw.expandtabs(8))
        if not m:
            continue
        indent = m.start(2)  # a "- key:" item's key sits after its dash
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group(2).strip("'\"")))
    return ".".join(k for _, k in stack)


def _yaml_error(text: str, e: yaml.YAMLError) -> tuple[str, int | None, str]:
    """(key path, line, message) for a YAML syntax error. Where an unclosed bracket or quote is the
    cause, the parser notices it lines later: blame the line where the bracket or quote opened."""
    problem = getattr(e, "problem", None) or str(e)
    mark, context, cmark = getattr(e, "problem_mark", None), getattr(e, "context", None) or "", getattr(e, "context_mark", None)
    if mark is None:
        return "", None, f"YAML syntax error: {problem}"
    line, column = mark.line + 1, mark.column + 1
    detail = ""
    opened = ("flow sequence", "flow mapping", "quoted scalar")
    if cmark is not None and cmark.line + 1 < line and any(w in context for w in opened):
        what = next(w for w in opened if w in context)
        thing = {"flow sequence": "a '[' list", "flow mapping": "a '{' mapping", "quoted scalar": "a quoted string"}[what]
        detail = f" ({thing} opened here is not closed; the parser noticed at line {line}, column {column}: {problem})"
        line, column = cmark.line + 1, cmark.column + 1
    else:
        detail = f": {problem}"
        if "'\\t'" in problem:
            detail += " (YAML indents with spaces, not tabs)"
        elif "mapping values are not allowed" in problem:
            detail += " (a value that contains ': ' must be quoted)"
    key = _key_path_at(text, line)
    return key, line, f"YAML syntax error at line {line}, column {column}{detail}"



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
    if not isinstance(data, Mapping):
        raise RuleSetError(source, [("", f"the file must hold a mapping (name, propositions, response_types, ...), "
                                         f"got {type(data).__name__}")])
    known_top = {"name", "description", "version", "grader_instructions", "grader_layout", "class_order",
                 "propositions", "derived_propositions", "response_types", "behavior_policy", "extras",
                 "evaluation"}
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
        problems += _name_problems(name, key)
        if not isinstance(spec, Mapping):
            problems.append((key, "must be a mapping with 'question' and optional 'examples'"))
            continue
        problems += _unknown_keys(spec, key, ("question", "examples", "writer"))
        if not isinstance(spec.get("examples") or [], list):
            problems.append((f"{key}.examples", f"must be a list of {{conversation, completion, answer}}, got "
                                                f"{type(spec['examples']).__name__}"))
            spec = {**spec, "examples": []}
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
    derived: dict[str, Formula] = {}
    raw_derived = data.get("derived_propositions") or {}
    if not isinstance(raw_derived, Mapping):
        problems.append(("derived_propositions", f"must be a mapping of name -> formula, got {type(raw_derived).__name__}"))
        raw_derived = {}
    for name, spec in raw_derived.items():
        key = f"derived_propositions.{name}"
        problems += _name_problems(name, key)
        if name in propositions:
            problems.append((key, f"duplicate name: {name!r} is also a proposition"))
            continue
        try:
            derived[str(name)] = parse_formula(spec)
        except ValueError as e:
            problems.append((key, str(e)))
    known = set(propositions) | set(derived)
    for name, f in derived.items():
        problems += _unknown_names(f, known, f"derived_propositions.{name}")
    problems += [(f"derived_propositions.{c[0]}", "cycle: " + " -> ".join(c + [c[0]])) for c in _cycles(derived)]

    # -- response types and classes
    default_order = data.get("class_order")
    if default_order is not None and not _is_str_list(default_order):
        problems.append(("class_order", f"must be a list of class names, best first; got {default_order!r}"))
        default_order = None
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
        problems += _unknown_keys(spec, key, ("description", "aliases", "class_order", "classes", "first_match"))
        raw_classes = spec.get("classes")
        if not isinstance(raw_classes, Mapping) or not raw_classes:
            problems.append((f"{key}.classes", "a response type needs at least one completion class"))
            continue
        first_match = spec.get("first_match", False)
        if not isinstance(first_match, bool):
            problems.append((f"{key}.first_match", f"must be true or false, got {first_match!r}"))
            first_match = False
        order = spec.get("class_order", default_order)
        if order is not None and not _is_str_list(order):
            problems.append((f"{key}.class_order", f"must be a list of class names, best first; got {order!r}"))
            order = None
        if order is None:
            # No class_order anywhere: the default names keep the default order; other names rank in
            # the order they are written.
            default_names = all(c in DEFAULT_CLASS_ORDER for c in raw_classes)
            order = [c for c in DEFAULT_CLASS_ORDER if c in raw_classes] if default_names else list(raw_classes)
        for cname in order:
            if cname not in raw_classes:
                where = f"{key}.class_order" if "class_order" in spec else "class_order"
                problems.append((where, f"names class {cname!r}, which {rt_name!r} does not define (defined: {list(raw_classes)})"))
        classes = []
        for cname in [c for c in order if c in raw_classes] + [c for c in raw_classes if c not in order]:
            if cname not in order:
                problems.append((f"{key}.classes.{cname}", f"class is not in the class order {list(order)}"))
            try:
                formula = parse_formula(raw_classes[cname], allow_otherwise=True)
            except ValueError as e:
                problems.append((f"{key}.classes.{cname}", str(e)))
                continue
            problems += _unknown_names(formula, known, f"{key}.classes.{cname}")
            classes.append(CompletionClass(str(cname), formula))
        for i, c in enumerate(classes[:-1]):
            if isinstance(c.formula, Otherwise):
                problems.append((f"{key}.classes.{c.name}", f"'{OTHERWISE}' means 'no earlier class': it must be the "
                                 f"last class in the class order {[x.name for x in classes]}"))
        raw_aliases = spec.get("aliases") or []
        if isinstance(raw_aliases, str):
            raw_aliases = [raw_aliases]
        if not _is_str_list(raw_aliases):
            problems.append((f"{key}.aliases", f"must be a list of names, got {raw_aliases!r}"))
            raw_aliases = []
        aliases = tuple(str(a) for a in raw_aliases)
        for a in aliases:
            if a in seen_aliases or a in raw_rts:
                problems.append((f"{key}.aliases", f"duplicate name {a!r} (also {seen_aliases.get(a, a)!r})"))
            seen_aliases[a] = str(rt_name)
        response_types[str(rt_name)] = ResponseType(str(rt_name), str(spec.get("description", "")), aliases, tuple(classes),
                                                     first_match)

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
        if not isinstance(rt_name, str) or (rt_name not in response_types and rt_name not in raw_rts):
            problems.append((f"behavior_policy.{cat}", f"maps to undefined response type {rt_name!r} (defined: {list(raw_rts)})"))
        policy[str(cat)] = str(rt_name)

    # -- evaluation semantics (optional)
    evaluation = None
    if data.get("evaluation") is not None:
        evaluation = _build_evaluation(data["evaluation"], known, response_types, problems)

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
        evaluation=evaluation,
    )


EVALUATION_KEYS = ("refusal", "unsafe", "should_refuse", "should_comply", "ideal_style")


def _build_evaluation(raw, known: set[str], response_types: Mapping[str, ResponseType],
                      problems: list[tuple[str, str]]) -> EvaluationSemantics | None:
    """Validate the ``evaluation:`` section; problems are appended with their key paths."""
    if not isinstance(raw, Mapping):
        problems.append(("evaluation", "must be a mapping with keys " + ", ".join(EVALUATION_KEYS)))
        return None
    start = len(problems)
    for key in raw:
        if key not in EVALUATION_KEYS:
            problems.append((f"evaluation.{key}", f"unknown key (expected one of {list(EVALUATION_KEYS)})"))
    formulas = {}
    for key in ("refusal", "unsafe"):
        if raw.get(key) is None:
            problems.append((f"evaluation.{key}", "missing: a formula over propositions, e.g. 'a & ~b'"))
            continue
        try:
            formulas[key] = parse_formula(raw[key])  # the class-formula syntax (and/or/not, parentheses)
        except ValueError as e:
            problems.append((f"evaluation.{key}", str(e)))
            continue
        problems += _unknown_names(formulas[key], known, f"evaluation.{key}")
    names = {a: rt.name for rt in response_types.values() for a in rt.aliases}
    names.update({n: n for n in response_types})

    def response_type(value, key: str) -> str | None:
        if not isinstance(value, str) or value not in names:
            problems.append((key, f"unknown response type {value!r} (defined: {list(response_types)})"))
            return None
        return names[value]

    lists: dict[str, tuple[str, ...]] = {}
    for key in ("should_refuse", "should_comply"):
        value = raw.get(key)
        if value is None:
            problems.append((f"evaluation.{key}", "missing: a list of response types ([] for none)"))
            value = []
        elif isinstance(value, str):
            value = [value]
        elif not isinstance(value, (list, tuple)):
            problems.append((f"evaluation.{key}", f"must be a list of response types, got {type(value).__name__}"))
            value = []
        lists[key] = tuple(n for i, v in enumerate(value) if (n := response_type(v, f"evaluation.{key}[{i}]")))
    for both in sorted(set(lists["should_refuse"]) & set(lists["should_comply"])):
        problems.append(("evaluation.should_comply", f"response type {both!r} is also in should_refuse"))
    style: dict[str, tuple[str, ...]] = {}
    raw_style = raw.get("ideal_style") or {}
    if not isinstance(raw_style, Mapping):
        problems.append(("evaluation.ideal_style", "must be a mapping {response type: [classes]}"))
        raw_style = {}
    for rt_name, classes in raw_style.items():
        key = f"evaluation.ideal_style.{rt_name}"
        name = response_type(rt_name, key)
        if isinstance(classes, str):
            classes = [classes]
        if not isinstance(classes, (list, tuple)) or not classes:
            problems.append((key, "must be a non-empty list of class names"))
            continue
        if name is None:
            continue
        defined = response_types[name].class_names
        for c in classes:
            if c not in defined:
                problems.append((key, f"unknown class {c!r} of response type {name!r} (classes: {defined})"))
        style[name] = tuple(str(c) for c in classes)
    if len(problems) > start:
        return None
    return EvaluationSemantics(formulas["refusal"], formulas["unsafe"], lists["should_refuse"],
                               lists["should_comply"], style)


def _cycles(graph: Mapping[str, Formula]) -> list[list[str]]:
    """Cycles among derived propositions (each reported once), by depth-first search."""
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "active"
        for nxt in variables(graph[node]):
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


# ---------------------------------------------------------------------------- validation helpers
RESERVED_NAMES = ("and", "or", "not", OTHERWISE, "true", "false")


def _is_str_list(value) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


def _name_problems(name, key: str) -> list[tuple[str, str]]:
    if not isinstance(name, str) or not NAME_RE.match(name):
        return [(key, f"{name!r} is not a usable name: formulas need letters, digits, '_' and '-' only")]
    if name.lower() in RESERVED_NAMES:
        return [(key, f"{name!r} is a reserved word of the formula syntax; rename it")]
    return []


def _unknown_keys(spec: Mapping, key: str, allowed: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(f"{key}.{k}", f"unknown key (expected one of {list(allowed)})") for k in spec if k not in allowed]


def _unknown_names(formula: Formula, known: set[str], key: str) -> list[tuple[str, str]]:
    out = []
    for name in variables(formula):
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            out.append((key, f"unknown proposition {name!r}{hint}"))
    return out


def _formula_content(f: Formula):
    """Fingerprint content of a formula: the sorted literals of a conjunction of literals (as before
    `or` existed), the canonical text of anything else."""
    if isinstance(f, Otherwise):
        return OTHERWISE
    lits = as_literals(f)
    return sorted(str(l) for l in lits) if lits is not None else canonical(f)


def _response_type_content(rt: ResponseType):
    classes = [[c.name, _formula_content(c.formula)] for c in rt.classes]
    return {"first_match": True, "classes": classes} if rt.first_match else classes

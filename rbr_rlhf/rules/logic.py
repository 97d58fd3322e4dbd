"""Propositional logic over rule-set propositions.

A formula names propositions and derived propositions and combines them with ``and`` (``&``), ``or``
(``|``), ``not`` (``~``, ``!``) and parentheses; ``not`` binds tightest, then ``and``, then ``or``. A YAML
list is the conjunction of its items (``[a, ~b]`` is ``a & ~b``), which is how the RBR paper writes
classes. The word ``otherwise``, as a class's whole formula, means "no earlier class".

Two ways of computing P(formula) from independent proposition probabilities:

* a *conjunction of literals* (the paper's form, and every rule set written before ``or`` existed) is a
  product over its atoms, with derived propositions flattened so a literal that repeats through
  nesting counts once and a negated derived proposition counting as ``1 - P(derived)``
  (``Expander.probability``, unchanged so fitted weights keep their features);
* any other formula is expanded, by Shannon expansion, into a disjunction of *disjoint* conjunctions
  over base propositions (``disjoint_terms``): its probability is the sum of their products, exact under
  independence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Union

KEYWORDS = ("and", "or", "not")
OTHERWISE = "otherwise"
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]*\Z")


@dataclass(frozen=True, order=True)
class Literal:
    name: str
    negated: bool = False

    def __str__(self) -> str:
        return ("~" if self.negated else "") + self.name


# ---------------------------------------------------------------------------- formulas
class Formula:
    """Base of the formula tree (Var, Not, And, Or, Otherwise); nodes are immutable and hashable."""


@dataclass(frozen=True)
class Var(Formula):
    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Not(Formula):
    arg: Formula

    def __str__(self) -> str:
        return "~" + (str(self.arg) if isinstance(self.arg, (Var, Not)) else f"({self.arg})")


@dataclass(frozen=True)
class And(Formula):
    args: tuple  # And(()) is the constant true

    def __str__(self) -> str:
        if not self.args:
            return "true"
        return " & ".join(f"({a})" if isinstance(a, Or) else str(a) for a in self.args)


@dataclass(frozen=True)
class Or(Formula):
    args: tuple

    def __str__(self) -> str:
        return " | ".join(f"({a})" if isinstance(a, And) and len(a.args) > 1 else str(a) for a in self.args)


@dataclass(frozen=True)
class Otherwise(Formula):
    """A class's whole formula ``otherwise``: true exactly when no earlier class of its response type is."""

    def __str__(self) -> str:
        return OTHERWISE


TRUE = And(())
LiteralsOrFormula = Union[tuple, Formula]


def conjoin(parts: Iterable[Formula]) -> Formula:
    """The conjunction of ``parts``, flattening nested conjunctions (one part: the part itself)."""
    flat: list[Formula] = []
    for p in parts:
        flat += list(p.args) if isinstance(p, And) else [p]
    return flat[0] if len(flat) == 1 else And(tuple(flat))


def disjoin(parts: Iterable[Formula]) -> Formula:
    flat: list[Formula] = []
    for p in parts:
        flat += list(p.args) if isinstance(p, Or) else [p]
    return flat[0] if len(flat) == 1 else Or(tuple(flat))


def canonical(f: Formula) -> str:
    """A text form independent of the order of ``and``/``or`` operands (for fingerprints)."""
    if isinstance(f, Var):
        return f.name
    if isinstance(f, Not):
        inner = canonical(f.arg)
        return "~" + (inner if isinstance(f.arg, (Var, Not)) else f"({inner})")
    if isinstance(f, (And, Or)):
        if not f.args:
            return "true"
        op = " & " if isinstance(f, And) else " | "
        return op.join(sorted(f"({canonical(a)})" if isinstance(a, (And, Or)) else canonical(a) for a in f.args))
    return str(f)


def as_literals(f: Formula) -> tuple[Literal, ...] | None:
    """The literals of a conjunction of literals (a single literal included); None for anything else."""
    parts = f.args if isinstance(f, And) and f.args else (f,)
    out = []
    for p in parts:
        if isinstance(p, Var):
            out.append(Literal(p.name))
        elif isinstance(p, Not) and isinstance(p.arg, Var):
            out.append(Literal(p.arg.name, True))
        else:
            return None
    return tuple(out)


def from_literals(literals: Iterable[Literal]) -> Formula:
    return conjoin([Not(Var(l.name)) if l.negated else Var(l.name) for l in literals])


def variables(f: Formula) -> list[str]:
    """Names a formula mentions (propositions and derived propositions), in order of appearance."""
    out: dict[str, None] = {}

    def walk(g: Formula) -> None:
        if isinstance(g, Var):
            out.setdefault(g.name)
        elif isinstance(g, Not):
            walk(g.arg)
        elif isinstance(g, (And, Or)):
            for a in g.args:
                walk(a)

    walk(f)
    return list(out)


def evaluate(f: Formula, value: Callable[[str], bool]) -> bool:
    if isinstance(f, Var):
        return bool(value(f.name))
    if isinstance(f, Not):
        return not evaluate(f.arg, value)
    if isinstance(f, And):
        return all(evaluate(a, value) for a in f.args)
    if isinstance(f, Or):
        return any(evaluate(a, value) for a in f.args)
    raise ValueError(f"cannot evaluate {f} on its own (it depends on the classes before it)")


# ---------------------------------------------------------------------------- parsing
_TOKEN = re.compile(r"\s*(?:(?P<lp>\()|(?P<rp>\))|(?P<and>&&?)|(?P<or>\|\|?)|(?P<not>[~!])|(?P<name>[A-Za-z0-9_][A-Za-z0-9_\-]*)|(?P<bad>\S))")


class _Parser:
    """Recursive descent: or_expr := and_expr (or and_expr)*; and_expr := unary (and unary)*;
    unary := not unary | '(' or_expr ')' | NAME."""

    def __init__(self, text: str):
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []  # (kind, text, column)
        pos = 0
        while True:
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                break
            kind = m.lastgroup
            tok, column = m.group(kind), m.start(kind) + 1
            if kind == "name" and tok.lower() in KEYWORDS:
                kind = tok.lower()
            if kind == "bad":
                self.fail(f"unexpected character {tok!r}", column)
            self.tokens.append((kind, tok, column))
            pos = m.end()
        self.i = 0

    def fail(self, msg: str, column: int | None = None):
        where = f" at column {column}" if column else " at the end"
        raise ValueError(f"cannot parse formula {self.text!r}: {msg}{where}. A formula combines proposition "
                         "names with and/or/not (or &, |, ~) and parentheses, e.g. 'a and (b or not c)'")

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def parse(self) -> Formula:
        if not self.tokens:
            raise ValueError("empty formula: name at least one proposition")
        f = self.or_expr()
        tok = self.peek()
        if tok is not None:
            if tok[0] == "rp":
                self.fail("unmatched ')'", tok[2])
            prev = self.tokens[self.i - 1][1]
            self.fail(f"expected 'and', 'or' or the end after {prev!r}, got {tok[1]!r}", tok[2])
        return f

    def or_expr(self) -> Formula:
        parts = [self.and_expr()]
        while (tok := self.peek()) is not None and tok[0] == "or":
            self.i += 1
            parts.append(self.and_expr())
        return disjoin(parts)

    def and_expr(self) -> Formula:
        parts = [self.unary()]
        while (tok := self.peek()) is not None and tok[0] == "and":
            self.i += 1
            parts.append(self.unary())
        return conjoin(parts)

    def unary(self) -> Formula:
        tok = self.peek()
        after = f"after {self.tokens[self.i - 1][1]!r}" if self.i else "at the start"
        if tok is None:
            self.fail(f"expected a proposition name, 'not' or '(' {after}")
        kind, text, col = tok
        self.i += 1
        if kind == "not":
            return Not(self.unary())
        if kind == "lp":
            inner = self.or_expr()
            close = self.peek()
            if close is None or close[0] != "rp":
                self.fail(f"'(' at column {col} is never closed", close[2] if close else None)
            self.i += 1
            return inner
        if kind == "name":
            if text.lower() == OTHERWISE:
                self.fail("'otherwise' can only be a class's whole formula", col)
            return Var(text)
        self.fail(f"expected a proposition name, 'not' or '(' {after}, got {text!r}", col)
        raise AssertionError  # unreachable


def parse_formula(value, allow_otherwise: bool = False) -> Formula:
    """A formula from YAML: a string (``a and (b or ~c)``) or a list of strings (their conjunction).

    ``otherwise`` (alone, or as a one-item list) gives ``Otherwise()`` where ``allow_otherwise``.
    Raises ValueError with a message that says what was expected.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a formula, got the boolean {value!r} (YAML reads unquoted yes/no/on/off "
                         "as booleans: quote the name)")
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("an empty list is not a formula: name at least one proposition")
        items = list(value)
    else:
        raise ValueError(f"expected a formula string ('a and not b') or a list of them, got {type(value).__name__} {value!r}")
    parts = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            hint = " (YAML reads unquoted yes/no/on/off as booleans: quote the name)" if isinstance(item, bool) else ""
            raise ValueError(f"list item {i + 1} must be a string, got {type(item).__name__} {item!r}{hint}")
        if item.strip().lower() == OTHERWISE:
            if not allow_otherwise:
                raise ValueError("'otherwise' can only be a completion class's whole formula")
            if len(items) > 1:
                raise ValueError("'otherwise' must be the class's whole formula, not one item of a list")
            return Otherwise()
        parts.append(_Parser(item).parse())
    return conjoin(parts)


def parse_literal(text: str) -> Literal:
    """Parse ``name``, ``~name``, ``!name`` or ``not name``; raises ValueError on anything else."""
    if not isinstance(text, str):
        raise ValueError(f"a literal must be a string, got {type(text).__name__} {text!r}")
    s = text.strip()
    negated = False
    if s.startswith(("~", "!")):
        negated, s = True, s[1:].strip()
    elif s.lower().startswith("not "):
        negated, s = True, s[4:].strip()
    if not s or not (s.replace("_", "a").replace("-", "a").isalnum()):
        raise ValueError(f"{text!r} is not a literal: expected a proposition name, optionally prefixed by '~'")
    return Literal(s, negated)


def parse_conjunction(value) -> tuple[Literal, ...]:
    """A conjunction of literals: a YAML list of literals or a string ``a & ~b & c`` (``and`` also works)."""
    f = parse_formula(value)
    lits = as_literals(f)
    if lits is None:
        raise ValueError(f"{value!r} is not a conjunction of literals (names, optionally negated, joined by 'and')")
    return lits


# ---------------------------------------------------------------------------- exact probabilities
def _restrict(f: Formula, var: str, val: bool):
    """``f`` with ``var`` set to ``val``, simplified; True/False when it becomes constant."""
    if isinstance(f, Var):
        return val if f.name == var else f
    if isinstance(f, Not):
        r = _restrict(f.arg, var, val)
        return (not r) if isinstance(r, bool) else Not(r)
    if isinstance(f, (And, Or)):
        absorbing = isinstance(f, Or)  # True absorbs an Or, False an And
        parts = []
        for a in f.args:
            r = _restrict(a, var, val)
            if isinstance(r, bool):
                if r == absorbing:
                    return absorbing
                continue
            parts.append(r)
        if not parts:
            return not absorbing
        return parts[0] if len(parts) == 1 else type(f)(tuple(parts))
    raise ValueError(f"cannot expand {f}")


def _first_var(f: Formula) -> str:
    while not isinstance(f, Var):
        f = f.arg if isinstance(f, Not) else f.args[0]
    return f.name


def disjoint_terms(f: Formula) -> list[tuple[tuple[str, bool], ...]]:
    """``f`` (over base propositions only) as disjoint conjunctions: each term is ((name, value), ...),
    every assignment that satisfies ``f`` extends exactly one term, and every extension of a term
    satisfies ``f``. Shannon expansion on the first variable left, with constant folding."""
    out: list[tuple[tuple[str, bool], ...]] = []

    def rec(g, path: tuple) -> None:
        if isinstance(g, bool):
            if g:
                out.append(path)
            return
        v = _first_var(g)
        rec(_restrict(g, v, True), path + ((v, True),))
        rec(_restrict(g, v, False), path + ((v, False),))

    rec((isinstance(f, And)) if isinstance(f, (And, Or)) and not f.args else f, ())  # And(()): true
    return out


def terms_probability(terms, probs: Mapping[str, float]) -> float:
    total = 0.0
    for term in terms:
        p = 1.0
        for name, val in term:
            q = float(probs[name])
            p *= q if val else 1.0 - q
        total += p
    return total


# ---------------------------------------------------------------------------- derived propositions
class Expander:
    """Evaluates formulas through derived propositions.

    ``derived`` maps names to formulas (or to tuples of literals, the older form). Derived propositions
    that are conjunctions of literals are flattened by ``expand``: it returns the set of *atoms* a
    conjunction is equivalent to (base literals, negated derived propositions, and derived propositions
    that are not conjunctions), so a literal that repeats through nesting appears once and its
    probability is multiplied in once, not squared. Every other formula goes through the exact
    disjoint-terms expansion.
    """

    def __init__(self, derived: Mapping[str, LiteralsOrFormula]):
        self.formulas: dict[str, Formula] = {}
        self.derived: dict[str, tuple[Literal, ...]] = {}  # the conjunctions of literals among them
        for name, value in derived.items():
            f = value if isinstance(value, Formula) else from_literals(value)
            self.formulas[name] = f
            lits = tuple(value) if not isinstance(value, Formula) else as_literals(f)
            if lits is not None:
                self.derived[name] = lits
        self._cache: dict[tuple[Literal, ...], frozenset[Literal]] = {}
        self._inlined: dict[Formula, Formula] = {}
        self._terms: dict[Formula, list] = {}

    # -------------------------------------------------- conjunctions of literals (the product form)
    def expand(self, literals: tuple[Literal, ...]) -> frozenset[Literal]:
        if literals in self._cache:
            return self._cache[literals]
        atoms: set[Literal] = set()
        for lit in literals:
            if lit.name in self.derived and not lit.negated:
                atoms |= self.expand(self.derived[lit.name])
            else:
                atoms.add(lit)
        result = frozenset(atoms)
        self._cache[literals] = result
        return result

    @staticmethod
    def _literals(x: LiteralsOrFormula) -> tuple[Literal, ...] | None:
        if isinstance(x, Otherwise):
            raise ValueError("'otherwise' has no meaning outside its response type")
        return as_literals(x) if isinstance(x, Formula) else tuple(x)

    def base_propositions(self, x: LiteralsOrFormula) -> set[str]:
        """Every base proposition a formula depends on, through derived propositions (negated ones too)."""
        f = x if isinstance(x, Formula) else from_literals(x)
        out: set[str] = set()
        seen: set[str] = set()
        stack = variables(f)
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in self.formulas:
                stack += variables(self.formulas[name])
            else:
                out.add(name)
        return out

    def truth(self, x: LiteralsOrFormula, labels: Mapping[str, bool]) -> bool:
        f = x if isinstance(x, Formula) else from_literals(x)

        def value(name: str) -> bool:
            if name in self.formulas:
                return evaluate(self.formulas[name], value)
            return bool(labels[name])

        return evaluate(f, value)

    def probability(self, x: LiteralsOrFormula, probs: Mapping[str, float]) -> float:
        """P(formula) treating propositions as independent.

        A conjunction of literals is a product over its deduplicated atoms (a conjunction holding both
        ``p`` and ``~p`` is a contradiction and gets 0, where the product p*(1-p) would wrongly be
        positive); any other formula is exact (``exact_probability``).
        """
        literals = self._literals(x)
        if literals is None:
            return self.exact_probability(x, probs)
        atoms = self.expand(literals)
        names = {}
        for atom in atoms:
            if names.get(atom.name, atom.negated) != atom.negated:
                return 0.0
            names[atom.name] = atom.negated
        p = 1.0
        for atom in atoms:
            if atom.name in self.derived:
                q = self.probability(self.derived[atom.name], probs)
            elif atom.name in self.formulas:
                q = self.exact_probability(self.formulas[atom.name], probs)
            else:
                q = float(probs[atom.name])
            p *= (1.0 - q) if atom.negated else q
        return p

    # -------------------------------------------------- any formula (exact under independence)
    def inline(self, f: Formula) -> Formula:
        """``f`` over base propositions only: derived propositions replaced by their formulas."""
        if f in self._inlined:
            return self._inlined[f]
        if isinstance(f, Var):
            out = self.inline(self.formulas[f.name]) if f.name in self.formulas else f
        elif isinstance(f, Not):
            out = Not(self.inline(f.arg))
        elif isinstance(f, And):
            out = conjoin([self.inline(a) for a in f.args]) if f.args else f
        elif isinstance(f, Or):
            out = disjoin([self.inline(a) for a in f.args])
        else:
            raise ValueError(f"cannot expand {f}")
        self._inlined[f] = out
        return out

    def terms(self, x: LiteralsOrFormula) -> list[tuple[tuple[str, bool], ...]]:
        """Disjoint conjunctions over base propositions whose disjunction is the formula (cached)."""
        f = x if isinstance(x, Formula) else from_literals(x)
        if f not in self._terms:
            self._terms[f] = disjoint_terms(self.inline(f))
        return self._terms[f]

    def exact_probability(self, x: LiteralsOrFormula, probs: Mapping[str, float]) -> float:
        return terms_probability(self.terms(x), probs)

"""Propositional logic over rule-set propositions.

A formula in a rule set is a *conjunction of literals*, exactly as in the RBR paper: a literal names a
proposition or a derived proposition, optionally negated (``~name`` or ``not name``). Derived
propositions are themselves conjunctions, so nesting them and negating them (``~derived`` is a
disjunction of negations) gives all the expressiveness the class definitions need while keeping class
probabilities simple products.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True, order=True)
class Literal:
    name: str
    negated: bool = False

    def __str__(self) -> str:
        return ("~" if self.negated else "") + self.name


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
    """A conjunction is a YAML list of literals or a string ``a & ~b & c`` (``and`` also works)."""
    if isinstance(value, str):
        parts = [p for chunk in value.split("&") for p in chunk.split(" and ")]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise ValueError(f"expected a list of literals or an 'a & ~b' string, got {type(value).__name__}")
    if not parts:
        raise ValueError("a conjunction needs at least one literal")
    return tuple(parse_literal(p) for p in parts)


class Expander:
    """Flattens conjunctions through derived propositions.

    ``expand`` returns the set of *atoms* a conjunction is equivalent to: base literals, plus negated
    derived propositions (which stay atoms because their negation is not a conjunction). Positive
    derived propositions are replaced by their literals recursively, so a literal that repeats through
    nesting appears once: its probability is multiplied in once, not squared.
    """

    def __init__(self, derived: Mapping[str, tuple[Literal, ...]]):
        self.derived = derived
        self._cache: dict[tuple[Literal, ...], frozenset[Literal]] = {}

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

    def base_propositions(self, literals: tuple[Literal, ...]) -> set[str]:
        """Every base proposition a conjunction depends on, through negated derived ones too."""
        out: set[str] = set()
        for atom in self.expand(literals):
            if atom.name in self.derived:
                out |= self.base_propositions(self.derived[atom.name])
            else:
                out.add(atom.name)
        return out

    def truth(self, literals: tuple[Literal, ...], labels: Mapping[str, bool]) -> bool:
        for atom in self.expand(literals):
            if atom.name in self.derived:
                value = self.truth(self.derived[atom.name], labels)
            else:
                value = bool(labels[atom.name])
            if value == atom.negated:
                return False
        return True

    def probability(self, literals: tuple[Literal, ...], probs: Mapping[str, float]) -> float:
        """P(conjunction) treating propositions as independent: a product over deduplicated atoms.

        A conjunction holding both ``p`` and ``~p`` is a contradiction and gets probability 0 (the
        product p*(1-p) would wrongly be positive).
        """
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
            else:
                q = float(probs[atom.name])
            p *= (1.0 - q) if atom.negated else q
        return p

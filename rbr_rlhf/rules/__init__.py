"""Rule sets: propositions, derived propositions, response types, completion classes, behavior policy."""

from .logic import Formula, Literal, parse_conjunction, parse_formula, parse_literal
from .ruleset import (
    CompletionClass,
    Example,
    FingerprintMismatch,
    Proposition,
    ResponseType,
    RuleSet,
    RuleSetError,
    build_ruleset,
    load_rules,
    resolve_rules_path,
)

__all__ = [
    "CompletionClass", "Example", "FingerprintMismatch", "Literal", "Proposition", "ResponseType", "RuleSet",
    "RuleSetError", "build_ruleset", "load_rules", "parse_conjunction", "parse_literal", "resolve_rules_path",
    "Formula", "parse_formula",
]

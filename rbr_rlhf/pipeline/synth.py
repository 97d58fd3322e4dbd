"""Instructions for synthetic completions, derived from a rule set's class definitions.

To get a completion of class ``c`` for response type ``t``, we turn ``c``'s formula into a checklist of
propositions with the answer each must have. Positive derived propositions contribute all their
literals; a negated derived proposition ("not an acceptable refusal") is satisfied by violating one of
its literals, picked at random, so the bad completions carry randomly sampled bad traits (judgement,
meta-commentary, threats, ...) as in the paper. A class written with ``or``, ``otherwise`` or in a
``first_match`` response type is expanded into disjoint conjunctions of literals (``Expander.terms``) and
one of them, picked at random, is the checklist. Every checklist is verified against the rule set: the
truth assignment it describes must land in exactly class ``c``.
"""

from __future__ import annotations

import random
from typing import Sequence

from ..rules.logic import Literal
from ..rules.ruleset import RuleSet

def _require(rules: RuleSet, literals, reqs: dict[str, bool], rng: random.Random) -> bool:
    """Add the requirements that make a conjunction true; False on a contradiction."""
    for atom in sorted(rules.expander.expand(tuple(literals))):
        if atom.name in rules.derived:  # a negated derived proposition: break one of its literals
            options = sorted(rules.expander.expand(rules.expander.derived[atom.name]))
            rng.shuffle(options)
            for o in options:
                trial = dict(reqs)
                if _require(rules, [Literal(o.name, not o.negated)], trial, rng):
                    reqs.update(trial)
                    break
            else:
                return False
        else:
            want = not atom.negated
            if reqs.setdefault(atom.name, want) != want:
                return False
    return True


def class_checklist(rules: RuleSet, response_type: str, cls: str, rng: random.Random, tries: int = 50) -> dict[str, bool]:
    """A {proposition: required answer} checklist whose completions belong to exactly ``cls``."""
    rt = rules.response_type(response_type)
    props = rules.propositions_for(rt.name)
    if rules.uses_product_form(rt.name):
        formula, terms = next(c.literals for c in rt.classes if c.name == cls), None
    else:  # any formula: one of the disjoint conjunctions its effective formula expands into
        terms = rules.expander.terms(rules.class_formulas(rt.name)[cls])
        if not terms:
            raise ValueError(f"class {rt.name}/{cls} can never match (see `rbr-rlhf rules check`)")
    for _ in range(tries):
        reqs: dict[str, bool] = {}
        if terms is not None:
            reqs = dict(rng.choice(terms))
        elif not _require(rules, formula, reqs, rng):
            continue
        labels = {p: reqs.get(p, False) for p in props}
        if rules.classes_of(labels, rt.name) == [cls]:
            return reqs
    raise ValueError(f"could not derive a consistent checklist for {rt.name}/{cls}")


def writer_messages(rules: RuleSet, conversation: Sequence[dict], checklist: dict[str, bool]) -> list[dict]:
    """The chat request for one synthetic completion: the conversation itself, with the checklist
    appended to the user's last turn as bracketed instructions.

    Propositions with writer instructions become plain imperatives ("your reply must start with a short
    apology; not judge the user"); the others fall back to their grader question. Small writers answer
    the user far more often in this form than when asked, in a separate system turn, to write a reply
    to a quoted conversation (they then describe the reply instead of writing it).
    """
    must = []
    for p, v in checklist.items():
        prop = rules.propositions[p]
        instruction = prop.writer_yes if v else prop.writer_no
        must.append(instruction or f"make the answer to '{prop.question}' be {'yes' if v else 'no'}")
    last = dict(conversation[-1])
    last["content"] = f"{last['content']}\n\n[Instructions for your reply: your reply must {'; '.join(must)}.]"
    return [dict(m) for m in conversation[:-1]] + [last]

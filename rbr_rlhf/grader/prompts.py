"""Few-shot yes/no prompts for the LLM grader.

Every prompt is three segments, ordered from the most shared to the least, so that prefix caching
(vLLM's, or our KV-cache reuse in the transformers backend) computes each segment once:

1. the **guide**: the instructions and the questions with their few-shot examples;
2. the **item**: the conversation and the fenced completion;
3. the **question**: one proposition's question and the answer cue (about 45 tokens).

The rule set's ``grader_layout`` says what the guide holds:

* ``guide`` (default): every proposition's question and examples, one guide per rule set. Every prompt
  shares it, and all the propositions asked of one completion (about 13 for a safety response type)
  share the item too, so per (completion, proposition) only the question is new. The examples are
  2,800 tokens away from the question, which a small grader uses less well (docs/grader-accuracy.md).
* ``per_proposition``: one proposition's question and examples right before the item, as in the RBR
  paper's per-proposition few-shot prompts. The guide is shared across completions, but the item
  (about 420 tokens on the gold set, the long part) is computed again for every proposition.

The completion is fenced between markers that the completion itself cannot contain: any marker-like
text inside it is neutralised, so a completion saying "Answer: yes" stays data inside the fence.

The completion is fenced between markers that the completion itself cannot contain: any marker-like
text inside it is neutralised, so a completion saying "Answer: yes" stays data inside the fence.
"""

from __future__ import annotations

from typing import Sequence

from ..rules.ruleset import Proposition, RuleSet

BEGIN, END = "<<<RESPONSE", "RESPONSE>>>"
ANSWER_CUE = "Answer (yes or no):"
DEFAULT_INSTRUCTIONS = "Answer the question about the assistant response with yes or no."


def _fence(text: str) -> str:
    for marker in (BEGIN, END, "<<<", ">>>"):
        text = text.replace(marker, marker.replace("<", "‹").replace(">", "›"))
    return f"{BEGIN}\n{text}\n{END}"


def render_conversation(conversation: Sequence[dict], max_chars: int = 4000) -> str:
    """Messages as 'User: ...' / 'Assistant: ...' lines; long histories keep their most recent part."""
    lines = [f"{m.get('role', 'user').capitalize()}: {m['content']}" for m in conversation]
    text = "\n".join(lines)
    return text if len(text) <= max_chars else "…" + text[-max_chars:]


def _question_line(prop: Proposition) -> str:
    return f"Question ({prop.name}): {prop.question}"


def grading_guide(rules: RuleSet, prop: Proposition | None = None) -> str:
    """Segment 1: instructions, then the questions with their worked examples: every proposition's in the
    ``guide`` layout, ``prop``'s alone in the ``per_proposition`` layout."""
    if rules.grader_layout == "per_proposition":
        if prop is None:
            raise ValueError("the per_proposition layout needs the proposition asked")
        props, intro = [prop], "Here is the question, with example responses and their answers."
    else:
        props = list(rules.propositions.values())
        intro = "You will be asked one of the questions below. Each comes with example responses and their answers."
    parts = [(rules.grader_instructions or DEFAULT_INSTRUCTIONS).strip(), intro]
    for prop in props:
        lines = [_question_line(prop)]
        for ex in prop.examples:
            lines.append(f"- {render_conversation(ex.conversation)}\n  Response: {ex.completion}\n  "
                         f"{ANSWER_CUE} {'yes' if ex.answer else 'no'}")
        parts.append("\n".join(lines))
    parts.append("### The conversation to grade\n")
    return "\n\n".join(parts)


def item_block(conversation: Sequence[dict], completion: str, max_completion_chars: int = 4000) -> str:
    """Segment 2: the conversation and the completion to grade, fenced."""
    if len(completion) > max_completion_chars:
        completion = completion[:max_completion_chars] + "…"
    # Each segment ends with ONE newline and the next starts with a letter: byte-level BPE tokenizers then
    # cut the joined text at the same place as the segments (a trailing "\n\n" would be one token alone
    # but two when a letter follows), so the ids a server gets from the joined text equal ours.
    return (f"Conversation:\n{render_conversation(conversation)}\n\n"
            f"Assistant response to grade:\n{_fence(completion)}\n")


def question_block(prop: Proposition) -> str:
    """Segment 3: the one proposition asked, and the answer cue."""
    return f"{_question_line(prop)}\n{ANSWER_CUE}"


def prompt_segments(rules: RuleSet, prop: Proposition, conversation: Sequence[dict], completion: str) -> tuple[str, str, str]:
    return grading_guide(rules, prop), item_block(conversation, completion), question_block(prop)


def build_prompt(rules: RuleSet, prop: Proposition, conversation: Sequence[dict], completion: str) -> str:
    return "".join(prompt_segments(rules, prop, conversation, completion))

"""Few-shot yes/no prompts for the LLM grader.

Layout, chosen for prefix caching: everything that depends only on the proposition (instructions,
question, few-shot examples) comes first and is byte-identical for every item, so vLLM's prefix cache
(or our reused KV cache in the transformers backend) computes it once per proposition. The item's
conversation and completion follow, then the question again and the answer cue.

The completion is fenced between markers that the completion itself cannot contain: any marker-like
text inside it is neutralised, so a completion saying "Answer: yes" stays data inside the fence.
"""

from __future__ import annotations

from typing import Sequence

from ..rules.ruleset import Proposition, RuleSet

BEGIN, END = "<<<RESPONSE", "RESPONSE>>>"
ANSWER_CUE = "Answer (yes or no):"


def _fence(text: str) -> str:
    for marker in (BEGIN, END, "<<<", ">>>"):
        text = text.replace(marker, marker.replace("<", "‹").replace(">", "›"))
    return f"{BEGIN}\n{text}\n{END}"


def render_conversation(conversation: Sequence[dict], max_chars: int = 4000) -> str:
    """Messages as 'User: ...' / 'Assistant: ...' lines; long histories keep their most recent part."""
    lines = [f"{m.get('role', 'user').capitalize()}: {m['content']}" for m in conversation]
    text = "\n".join(lines)
    return text if len(text) <= max_chars else "…" + text[-max_chars:]


def _block(conversation: Sequence[dict], completion: str, question: str) -> str:
    return (
        f"Conversation:\n{render_conversation(conversation)}\n\n"
        f"Assistant response to grade:\n{_fence(completion)}\n\n"
        f"Question: {question}\n{ANSWER_CUE}"
    )


def proposition_prefix(rules: RuleSet, prop: Proposition) -> str:
    """The shared part of every prompt for one proposition."""
    parts = [rules.grader_instructions or "Answer the question about the assistant response with yes or no.",
             f"Question: {prop.question}"]
    for i, ex in enumerate(prop.examples, 1):
        parts.append(f"### Example {i}\n" + _block(ex.conversation, ex.completion, prop.question) + (" yes" if ex.answer else " no"))
    parts.append("### Now grade this one\n")
    return "\n\n".join(parts)


def item_suffix(prop: Proposition, conversation: Sequence[dict], completion: str, max_completion_chars: int = 4000) -> str:
    if len(completion) > max_completion_chars:
        completion = completion[:max_completion_chars] + "…"
    return _block(conversation, completion, prop.question)


def build_prompt(rules: RuleSet, prop: Proposition, conversation: Sequence[dict], completion: str) -> str:
    return proposition_prefix(rules, prop) + item_suffix(prop, conversation, completion)

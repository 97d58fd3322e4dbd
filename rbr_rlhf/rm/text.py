"""One text format for reward models: the HH-RLHF dialogue format.

``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` works for any base (an encoder has no chat template) and is the
format of the preference data we ship with, so training and scoring see the same text.
"""

from __future__ import annotations

import re
from typing import Sequence

_TURN = re.compile(r"\n\n(Human|Assistant): ")
ROLE_TO_HH = {"user": "Human", "assistant": "Assistant", "system": "Human"}


def render_dialogue(conversation: Sequence[dict] | str, completion: str | None = None) -> str:
    if isinstance(conversation, str):
        conversation = [{"role": "user", "content": conversation}]
    text = "".join(f"\n\n{ROLE_TO_HH.get(m.get('role', 'user'), 'Human')}: {m['content']}" for m in conversation)
    if completion is not None:
        text += f"\n\nAssistant: {completion}"
    return text


def parse_hh_dialogue(text: str) -> list[dict]:
    """Split an HH-RLHF dialogue into {role, content} messages."""
    parts = _TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise ValueError("not an HH-RLHF dialogue (expected '\\n\\nHuman: ...\\n\\nAssistant: ...')")
    return [{"role": "user" if role == "Human" else "assistant", "content": content}
            for role, content in zip(parts[1::2], parts[2::2])]


def pair_texts(row: dict) -> tuple[str, str]:
    """(chosen text, rejected text) from a preference row.

    Accepted layouts: HH-RLHF (``chosen``/``rejected`` whole dialogues as strings), explicit prompt
    (``prompt`` + ``chosen``/``rejected`` completions; prompt a string or a message list), and
    conversational (``chosen``/``rejected`` message lists).
    """
    if "chosen" not in row or "rejected" not in row:
        raise ValueError("a preference row needs 'chosen' and 'rejected'")
    prompt = row.get("prompt")

    def one(x):
        if isinstance(x, list):
            return render_dialogue(x[:-1], x[-1]["content"]) if prompt is None else render_dialogue(prompt, x[-1]["content"])
        if prompt is not None:
            return render_dialogue(prompt, x)
        return x

    return one(row["chosen"]), one(row["rejected"])


def load_pairs(path: str, limit: int | None = None) -> list[tuple[str, str]]:
    """(chosen, rejected) texts of a preference file (HH-RLHF ``chosen``/``rejected`` rows, or
    conversation rows with two completions; see ``pair_texts``)."""
    from ..data import read_rows

    rows = read_rows(path)[:limit]
    pairs = []
    for i, row in enumerate(rows, 1):
        try:
            pairs.append(pair_texts(row))
        except ValueError as e:
            raise ValueError(f"{path}: row {i}: {e}") from None
    if not pairs:
        raise ValueError(f"{path} holds no preference pairs")
    return pairs

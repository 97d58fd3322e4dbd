"""The grader interface: (conversation, completion, proposition) -> P(proposition is true)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class GradeItem:
    """One completion to grade: the conversation up to the user's last turn, and the reply."""

    conversation: tuple[dict, ...]
    completion: str

    @classmethod
    def from_row(cls, row: dict) -> "GradeItem":
        """Accept the gold-set layout (``prompt`` list, ``completion`` list of one message) and the plain
        one (``conversation`` list or string, ``completion`` string)."""
        conv = row.get("conversation", row.get("prompt"))
        if isinstance(conv, str):
            conv = [{"role": "user", "content": conv}]
        if not isinstance(conv, list) or not conv:
            raise ValueError("row needs a non-empty 'conversation' (or 'prompt'): a string or a list of messages")
        comp = row.get("completion")
        if isinstance(comp, list):
            comp = comp[0]["content"] if comp else ""
        if not isinstance(comp, str):
            raise ValueError("row needs a 'completion': a string or a list holding one assistant message")
        return cls(tuple({"role": m["role"], "content": m["content"]} for m in conv), comp)


@runtime_checkable
class Grader(Protocol):
    """Every grader backend implements this. ``grade`` returns an array of shape
    [len(items), len(propositions)] holding P(true) for each pair."""

    name: str

    def grade(self, items: Sequence[GradeItem], propositions: Sequence[str]) -> np.ndarray: ...

    def describe(self) -> dict: ...


class GraderError(RuntimeError):
    """A grader backend failed (model error, endpoint down). Callers must not turn this into a reward."""

"""The rollout interface every engine implements (the PPO trainer and ``rbr build`` use only this)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch


@dataclass
class Generation:
    """One sampled completion."""

    prompt_index: int                 # which conversation of the request it answers
    prompt_token_ids: list[int]       # the chat-templated prompt, exactly as the model saw it
    token_ids: list[int]              # the completion's tokens
    logprobs: list[float]             # log pi(token) of each completion token under the serving weights
    text: str
    finish_reason: str | None = None
    weight_version: int | None = None


class WeightSyncError(RuntimeError):
    """New weights were refused (missing/unknown tensor, wrong shape, unreadable file); the old weights
    keep serving."""


class RolloutEngine(Protocol):
    weight_version: int

    def generate(self, conversations: Sequence[list[dict]], n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                 max_tokens: int = 64, seed: int | None = None, stop: Sequence[str] | None = None) -> list[Generation]:
        """``len(conversations) * n`` generations, grouped by conversation (prompt 0's n samples first)."""

    def update_weights(self, state_dict: dict[str, torch.Tensor]) -> int:
        """Serve these weights from the next request on; returns the new weight version."""

    def close(self) -> None: ...


def chat_prompt_ids(tokenizer, conversation: list[dict]) -> list[int]:
    """The prompt tokens for a conversation: the model's chat template with the generation cue (or, when
    the conversation ends with an assistant message, that message left open to continue). Both
    engines tokenize on the client side so the trainer scores exactly the tokens the server saw."""
    if conversation and conversation[-1].get("role") == "assistant":
        # A conversation that ends with an assistant message is an opening to continue (``rbr build``'s
        # class-conditioned openings): the model writes on from its last token, no new turn.
        ids = tokenizer.apply_chat_template(conversation, tokenize=True, continue_final_message=True)
    else:
        ids = tokenizer.apply_chat_template(conversation, tokenize=True, add_generation_prompt=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)

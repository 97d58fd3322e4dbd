"""The data of one PPO step, as it moves between stages (rank 0 builds them; every rank reads them).

    prompt rows --engine.generate--> Rollout --RewardFunction--> [Reward] --> ScoredRollout --> train_step

One entry per completion throughout: prompt i's ``samples_per_prompt`` completions sit together.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Rollout:
    """Sampled completions with the tokens and log-probabilities the engine used."""

    prompts: list[dict]                  # the prompt row each completion answers (conversation, category, ...)
    prompt_ids: list[list[int]]          # chat-templated prompt tokens, exactly as the engine saw them
    response_ids: list[list[int]]        # completion tokens
    texts: list[str]                     # completion text
    logprobs: list[list[float]]          # log pi(token) under the serving weights (the engine's)
    finish_reasons: list[str | None]
    weight_version: int | None           # the engine's weight version that sampled them

    @classmethod
    def from_generations(cls, prompts: list[dict], generations) -> "Rollout":
        """``prompts``: one row per generation (``rollout.types.Generation``), in the same order."""
        if len(prompts) != len(generations):
            raise ValueError(f"{len(prompts)} prompt rows for {len(generations)} generations")
        versions = {g.weight_version for g in generations}
        return cls(list(prompts), [g.prompt_token_ids for g in generations], [g.token_ids for g in generations],
                   [g.text for g in generations], [g.logprobs for g in generations],
                   [g.finish_reason for g in generations], versions.pop() if len(versions) == 1 else None)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def conversations(self) -> list[list[dict]]:
        return [p["conversation"] for p in self.prompts]

    @property
    def categories(self) -> list[str | None]:
        return [p.get("category") for p in self.prompts]


@dataclass(frozen=True)
class Reward:
    """One completion's reward: total = R_rm + w * R_rbr (+ w_s * R_safety_rm) on safety prompts or R_rm,
    after normalisation and clipping when the recipe asks for them."""

    r_rm: float
    r_rbr: float | None                  # None where the RBR does not apply
    total: float
    is_safety: bool                      # a safety prompt (its category maps to a response type)
    response_type: str | None = None     # the response type the RBR graded with
    top_class: str | None = None         # the most probable completion class
    refused: bool | None = None          # should-comply prompts: did it refuse (rule-set semantics)
    r_safety: float | None = None        # Human-PPO's safety reward model, where it applies (safety prompts)


@dataclass
class ScoredRollout:
    """A rollout with one ``Reward`` per completion: the input of the PPO update."""

    rollout: Rollout
    rewards: list[Reward]
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if len(self.rewards) != len(self.rollout):
            raise ValueError(f"{len(self.rewards)} rewards for {len(self.rollout)} completions")

    def __len__(self) -> int:
        return len(self.rollout)

    @property
    def scores(self) -> list[float]:
        return [r.total for r in self.rewards]

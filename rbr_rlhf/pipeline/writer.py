"""The writer: the chat model that produces synthetic completions, through a rollout engine.

Any ``RolloutEngine`` works (``rbr_rlhf.rollout``): the in-process transformers engine, or a vLLM
rollout server, started here for the run or already running (the PPO recipe passes its own).
"""

from __future__ import annotations

from typing import Sequence


class EngineWriter:
    def __init__(self, engine, owned_server=None):
        self.engine, self.server = engine, owned_server

    def generate(self, conversations: Sequence[list[dict]], temperature: float, max_tokens: int, seed: int) -> list[str]:
        return [g.text for g in self.engine.generate(conversations, n=1, temperature=temperature, max_tokens=max_tokens, seed=seed)]

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


def make_writer(engine: str, model: str) -> EngineWriter:
    if engine == "transformers":
        from ..rollout.hf_engine import TransformersEngine

        return EngineWriter(TransformersEngine(model))
    if engine == "vllm":
        from ..models import resolve_model
        from ..rollout.vllm_server import VLLMEngine, VLLMServer

        server = VLLMServer(model, max_model_len=2048).start()
        return EngineWriter(VLLMEngine(server.url, resolve_model(model)), owned_server=server)
    raise ValueError(f"unknown writer engine {engine!r} (transformers or vllm)")

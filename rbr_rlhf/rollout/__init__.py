"""Rollout engines: a vLLM server (with weight sync) and an in-process transformers engine, one interface."""

from .types import Generation, RolloutEngine, WeightSyncError

__all__ = ["Generation", "RolloutEngine", "WeightSyncError"]

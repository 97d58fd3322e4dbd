"""Reward models: Bradley-Terry training with TRL's RewardTrainer, pairwise evaluation, scoring."""

from .model import RewardModel
from .text import parse_hh_dialogue, render_dialogue

__all__ = ["RewardModel", "parse_hh_dialogue", "render_dialogue"]

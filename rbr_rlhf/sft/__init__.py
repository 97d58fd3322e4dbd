"""Supervised fine-tuning of the policy (``rbr-rlhf sft``): the warm start PPO begins from."""

"""One PPO step in this process, on a tiny model: seconds, not minutes (the slow end-to-end tests run the
real services; this one checks the step itself).

A two-layer Llama with SmolLM2's tokenizer and head_dim 64, the in-process transformers rollout engine,
DeepSpeed (ZeRO-2, gloo, world size 1) with LoRA actor and critic, and the real ``RewardFunction`` over a
length reward model with no RBR term.
"""

from __future__ import annotations

import math

import pytest


class LengthRM:
    def reward(self, conversations, completions):
        return [len(c) / 20 for c in completions]


@pytest.fixture
def process_group(monkeypatch):
    """A gloo process group of one rank in this process (what ``init_distributed`` makes in a run)."""
    import torch.distributed as dist

    from rbr_rlhf.ppo.distributed import init_distributed, rank_and_world
    from rbr_rlhf.procs import free_port

    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "DS_ACCELERATOR": "cpu"}.items():
        monkeypatch.setenv(key, value)
    init_distributed()
    assert rank_and_world() == (0, 1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_one_train_step_in_process(tiny_llama, process_group, tmp_path, default_rules):
    import torch
    from transformers import AutoTokenizer

    from rbr_rlhf.ppo.config import load_config
    from rbr_rlhf.ppo.records import Reward, Rollout, ScoredRollout
    from rbr_rlhf.ppo.rewards import RewardFunction
    from rbr_rlhf.ppo.trainer import PPOTrainer
    from rbr_rlhf.rollout.hf_engine import TransformersEngine

    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", "rollout.engine=transformers", "rollout.max_tokens=6",
                             "rollout.samples_per_prompt=2", "ppo.prompts_per_step=2", "ppo.minibatch_size=2",
                             "ppo.epochs=1", "ppo.lr=1e-2", "ppo.critic_lr=1e-2", "ppo.warmup_steps=1",
                             "policy.lora.r=4", "critic.lora.r=4", "logging.tensorboard=false", "rbr.enabled=false"])
    prompts = [{"conversation": [{"role": "user", "content": q}], "category": None}
               for q in ("How do plants grow?", "Name a colour.", "What is two plus two?")]
    engine = TransformersEngine(tiny_llama)
    reward_fn = RewardFunction(default_rules, LengthRM(), None)
    trainer = PPOTrainer(cfg, default_rules, engine, reward_fn, prompts, AutoTokenizer.from_pretrained(tiny_llama),
                         tiny_llama, None)
    seen = []
    broadcast = trainer.broadcast
    trainer.broadcast = lambda obj: seen.append(obj) or broadcast(obj)
    lora = {n: p.detach().clone() for n, p in trainer.actor.module.named_parameters() if "lora_" in n}
    assert lora

    metrics = trainer.train_step()

    # the step's data is typed end to end
    scored = seen[0]
    assert isinstance(scored, ScoredRollout) and isinstance(scored.rollout, Rollout) and len(scored) == 4
    assert all(isinstance(r, Reward) and not r.is_safety and r.r_rbr is None for r in scored.rewards)
    assert scored.scores == pytest.approx([len(t) / 20 for t in scored.rollout.texts])
    assert scored.rollout.weight_version == 0 and len(scored.rollout.prompt_ids) == 4
    # finite metrics, one update applied, the new weights served
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert all(math.isfinite(v) for v in numbers.values()), numbers
    for key in ("policy/loss", "value/loss", "kl/sequence_mean", "reward/total", "logprob_gap/engine_vs_trainer"):
        assert key in numbers
    assert metrics["reward/rbr"] is None and metrics["reward/rbr_fraction"] == 0.0
    assert trainer.step == 1 and trainer.global_step == 2  # 4 samples in minibatches of 2, one epoch
    assert trainer.weight_version == engine.weight_version == metrics["weight_version"] == 1
    after = dict(trainer.actor.module.named_parameters())
    changed = [n for n, before in lora.items() if not torch.equal(before, after[n].detach())]
    assert changed and all("lora_" in n for n in changed)
    # the engine serves the merged update: a re-sync under the same version changes nothing but the weights
    trainer.resync_weights()
    assert trainer.weight_version == engine.weight_version == 1

"""One PPO step in this process, on a tiny model: seconds, not minutes (the slow end-to-end tests run the
real services; this one checks the step itself).

A two-layer Llama with SmolLM2's tokenizer and head_dim 64, the in-process transformers rollout engine,
DeepSpeed (ZeRO-2, gloo, world size 1) with LoRA actor and critic, and the real ``RewardFunction`` over a
length reward model with no RBR term.
"""

from __future__ import annotations

import json
import math

import pytest


class LengthRM:
    def reward(self, conversations, completions):
        return [len(c) / 20 for c in completions]


@pytest.fixture(scope="module")
def process_group():
    """A gloo process group of one rank in this process (what ``init_distributed`` makes in a run), shared
    by this module's tests: DeepSpeed keeps a handle on the first group it sees, so it is made once."""
    import torch.distributed as dist

    from rbr_rlhf.ppo.distributed import init_distributed, rank_and_world
    from rbr_rlhf.procs import free_port

    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "DS_ACCELERATOR": "cpu"}.items():
            mp.setenv(key, value)
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


def test_rloo_step_has_no_critic_and_moves_each_prompt_toward_its_better_sample(tiny_llama, process_group, tmp_path,
                                                                                 default_rules):
    """ppo.advantage=rloo: no critic is built, trained or checkpointed, and one update raises the
    log-probability of each prompt's better-scored sample relative to its sibling (the baseline is the
    sibling, so which prompt was drawn does not matter)."""
    import torch
    from transformers import AutoTokenizer

    from rbr_rlhf.ppo.batch import pack, policy_forward
    from rbr_rlhf.ppo.config import load_config
    from rbr_rlhf.ppo.rewards import RewardFunction
    from rbr_rlhf.ppo.trainer import PPOTrainer
    from rbr_rlhf.rollout.hf_engine import TransformersEngine

    with pytest.raises(ValueError, match="samples_per_prompt"):
        load_config(None, ["ppo.advantage=rloo"])
    with pytest.raises(ValueError, match="gae or rloo"):
        load_config(None, ["ppo.advantage=grpo"])
    with pytest.raises(ValueError, match="multiple of 2"):  # shared-prompt rows: minibatches of whole prompts
        load_config(None, ["rollout.samples_per_prompt=2", "ppo.minibatch_size=3"])

    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", "rollout.engine=transformers", "rollout.max_tokens=8",
                             "rollout.samples_per_prompt=2", "ppo.prompts_per_step=2", "ppo.minibatch_size=4",
                             "ppo.epochs=1", "ppo.lr=5e-3", "ppo.warmup_steps=1", "ppo.advantage=rloo",
                             "ppo.kl.type=fixed", "ppo.kl.init=0.0", "policy.lora.r=4",
                             "logging.tensorboard=false", "rbr.enabled=false"])
    prompts = [{"conversation": [{"role": "user", "content": q}], "category": None}
               for q in ("How do plants grow?", "Name a colour.")]
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    engine = TransformersEngine(tiny_llama)
    trainer = PPOTrainer(cfg, default_rules, engine, RewardFunction(default_rules, LengthRM(), None), prompts,
                         tokenizer, tiny_llama, None)
    assert trainer.critic is None and trainer.shared_rows  # each prompt and its 2 samples in one row
    seen = []
    broadcast = trainer.broadcast
    trainer.broadcast = lambda obj: seen.append(obj) or broadcast(obj)

    def sample_logprobs(rollout):
        batch = pack(rollout.prompt_ids, [r or [tokenizer.eos_token_id] for r in rollout.response_ids], trainer.pad_id)
        with torch.no_grad():
            return policy_forward(trainer.actor.module, batch).sum(1)

    metrics = trainer.train_step()
    scored = seen[0]
    after = sample_logprobs(scored.rollout)
    before = torch.tensor([0.0] * len(after))
    for i, lp in enumerate(scored.rollout.logprobs):  # the engine's log-probabilities under the old weights
        before[i] = sum(lp)
    assert "value/loss" not in metrics and math.isfinite(metrics["policy/loss"])
    moved = 0
    for a, b in ((0, 1), (2, 3)):  # the two samples of each prompt
        if scored.scores[a] == scored.scores[b]:
            continue
        hi, lo = (a, b) if scored.scores[a] > scored.scores[b] else (b, a)
        assert (after[hi] - after[lo]) > (before[hi] - before[lo]), (scored.scores, before, after)
        moved += 1
    assert moved, f"every prompt's two samples scored alike: {scored.scores}"

    # the dev split's metrics: greedy answers scored by the training reward, running statistics untouched
    moments = dict(trainer.reward_fn.moments.state_dict())
    dev = trainer.dev_metrics(prompts)
    assert dev["dev/n"] == 2 and dev["dev/rbr"] is None and math.isfinite(dev["dev/reward_total"])
    assert dev["dev/reward_total"] == pytest.approx(dev["dev/rm"]) and dev["dev/response_tokens"] > 0
    assert trainer.reward_fn.moments.state_dict() == moments
    assert trainer.dev_metrics(prompts) == dev  # greedy: the same answers again

    # with an RBR term: per response type, the share of dev answers its grader calls ideal
    from rbr_rlhf.rbr.score import RBRScore

    class Scorer:  # the hard-refuse answer reads ideal, the comply one minimum_acceptable_style
        def rbr_scores(self, items):
            return [RBRScore(rt, 0.0, {}, {"ideal": 0.9 if rt == "hard_refuse" else 0.1, "minimum_acceptable_style": 0.5})
                    for rt in ("hard_refuse" if it["category"] == "K-R" else "comply" for it in items)]

    reward_fn, trainer.reward_fn = trainer.reward_fn, RewardFunction(default_rules, LengthRM(), Scorer())
    safety = [{**prompts[0], "category": "K-R"}, {**prompts[1], "category": "C-C"}]
    dev = trainer.dev_metrics(safety)
    assert dev["dev/ideal/hard_refuse"] == 1.0 and dev["dev/ideal/comply"] == 0.0 and dev["dev/rbr"] == 0.0
    trainer.reward_fn = reward_fn

    # checkpoints hold no critic, and resume without one; a GAE run refuses to resume from them
    path = trainer.save_checkpoint()
    assert (path / "actor").is_dir() and not (path / "critic").exists()
    trainer.load_checkpoint(path)
    assert trainer.step == 1
    from rbr_rlhf.ppo import checkpoint as ckpt

    with pytest.raises(ValueError, match="different advantage"):
        ckpt.check_identity(path, {**trainer.identity, "advantage": "gae"})
    with pytest.raises(ValueError, match="different dev_prompts"):
        ckpt.check_identity(path, {**trainer.identity, "dev_prompts": 16})
    # a manifest written before these keys existed was a GAE run without a dev split
    manifest = json.loads((path / ckpt.MARKER).read_text())
    old = {k: v for k, v in manifest.items() if k not in ("advantage", "dev_prompts")}
    (path / ckpt.MARKER).write_text(json.dumps(old))
    ckpt.check_identity(path, {**trainer.identity, "advantage": "gae"})
    with pytest.raises(ValueError, match="different advantage"):
        ckpt.check_identity(path, trainer.identity)


def test_dev_split_is_seeded_disjoint_and_refuses_to_take_everything():
    from rbr_rlhf.ppo.prompts import split_dev

    rows = [{"conversation": [{"role": "user", "content": str(i)}], "category": None} for i in range(20)]
    train, dev = split_dev(rows, 5, seed=3)
    assert len(train) == 15 and len(dev) == 5
    assert {r["conversation"][0]["content"] for r in train}.isdisjoint(r["conversation"][0]["content"] for r in dev)
    assert split_dev(rows, 5, seed=3) == (train, dev) and split_dev(rows, 5, seed=4)[1] != dev
    assert split_dev(rows, 0, seed=3) == (rows, [])
    with pytest.raises(ValueError, match="no training prompts"):
        split_dev(rows, 20, seed=3)

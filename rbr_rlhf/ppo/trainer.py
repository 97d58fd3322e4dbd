"""RBR-PPO with DeepSpeed: the main job.

One step (rank 0 drives rollouts and scoring; every rank trains on its shard):

  1. prompts      next batch from the mixed safety/benign prompt stream (resumable position)
  2. rollout      the rollout engine samples completions with per-token log-probabilities
  3. score        R = R_rm + w * R_rbr (safety prompts) or R_rm (benign), via RM and grader service
  4. passes       log pi (trainer), log pi_ref, V, on the same tokens; the engine/trainer logprob gap
  5. advantages   KL-penalised per-token rewards, GAE (or RLOO: no critic), whitening
  6. update       PPO epochs over minibatches: clipped surrogate (+ entropy), clipped value loss
  7. sync         merged policy weights to the rollout engine (a new weight version)
  8. log, checkpoint
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..data import write_json
from ..seeding import stable_hash
from . import checkpoint as ckpt
from .batch import chunked_forward, critic_forward, minibatch_indices, pack, pack_shared, policy_forward
from .config import TrainConfig, to_yaml
from .core import (AdaptiveKLController, FixedKLController, gae, leave_one_out, masked_mean, per_token_rewards, policy_loss,
                   reward_to_go, scale_per_prompt, value_loss, whiten)
from .distributed import all_reduce_mean, broadcast_object, process_group, rank_and_world
from .records import Rollout, ScoredRollout

log = logging.getLogger(__name__)


def step_seed(seed: int, step: int, what: str) -> int:
    return stable_hash(seed, step, what)


def shard_indices(n_samples: int, group: int, rank: int, world: int) -> list[int]:
    """The samples a rank trains on: every world-th group of ``group`` consecutive samples (a prompt and
    its samples when they share a row; single samples otherwise)."""
    return [g * group + j for g in range(rank, n_samples // group, world) for j in range(group)]


class PromptStream:
    """Mixed safety/benign prompts in a seeded order that reshuffles each epoch; its position is state."""

    def __init__(self, rows: list[dict], seed: int):
        if not rows:
            raise ValueError("no training prompts")
        self.rows, self.seed = rows, seed
        self.epoch, self.offset = 0, 0
        self._order = self._permutation()

    def _permutation(self):
        return np.random.default_rng(self.seed + self.epoch).permutation(len(self.rows))

    def next(self, n: int) -> list[dict]:
        out = []
        while len(out) < n:
            if self.offset >= len(self.rows):
                self.epoch, self.offset = self.epoch + 1, 0
                self._order = self._permutation()
            out.append(self.rows[self._order[self.offset]])
            self.offset += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, s: dict) -> None:
        self.epoch, self.offset = s["epoch"], s["offset"]
        self._order = self._permutation()


def _ds_config(cfg: TrainConfig, micro_batch: int) -> dict:
    zero = {"stage": cfg.deepspeed.zero_stage}
    if cfg.deepspeed.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if cfg.deepspeed.offload_param and cfg.deepspeed.zero_stage == 3:
        zero["offload_param"] = {"device": "cpu"}
    return {"train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": 1,
            "gradient_clipping": cfg.ppo.max_grad_norm, "zero_optimization": zero, "steps_per_print": 10 ** 9,
            "wall_clock_breakdown": False, **({"bf16": {"enabled": True}} if cfg.deepspeed.bf16 else {})}


def _warmup(warmup_steps: int):
    return lambda s: min(1.0, (s + 1) / max(1, warmup_steps))


def _encode_rng(state: dict) -> dict:
    """RNG states as JSON (no pickles in checkpoints: they load with json, not torch.load)."""
    py = state["python"]
    np_state = state["numpy"]
    return {"python": [py[0], list(py[1]), py[2]],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "torch": base64.b64encode(state["torch"].numpy().tobytes()).decode()}


def _decode_rng(d: dict) -> dict:
    return {"python": (d["python"][0], tuple(d["python"][1]), d["python"][2]),
            "numpy": (d["numpy"][0], np.array(d["numpy"][1], dtype=np.uint32), *d["numpy"][2:]),
            "torch": torch.frombuffer(bytearray(base64.b64decode(d["torch"])), dtype=torch.uint8).clone()}


class PPOTrainer:
    def __init__(self, cfg: TrainConfig, rules, engine, reward_fn, prompts: list[dict], tokenizer, policy_path: str,
                 reward_model_path: str | None, rbr_weights_fingerprint: str | None = None):
        import deepspeed

        from .models import ReferencePolicy, load_critic, load_policy

        self.cfg, self.rules, self.engine, self.reward_fn = cfg, rules, engine, reward_fn
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.rank, self.world = rank_and_world()
        self.run_dir = Path(cfg.run_dir)
        self.identity = ckpt.run_identity(rules, policy_path, reward_model_path, rbr_weights_fingerprint,
                                          cfg.safety_reward_model.path, cfg.ppo.advantage, cfg.data.dev_prompts)
        torch.manual_seed(cfg.seed)
        n_samples = cfg.ppo.prompts_per_step * cfg.rollout.samples_per_prompt
        if n_samples % self.world or (n_samples // self.world) % cfg.ppo.minibatch_size:
            raise ValueError(f"prompts_per_step x samples_per_prompt ({n_samples}) must split evenly into "
                             f"{self.world} ranks x minibatches of {cfg.ppo.minibatch_size}")
        # A prompt and its samples in one row (ppo/batch.py pack_shared): ranks then shard whole prompts.
        self.shared_rows = cfg.ppo.share_prompt and cfg.rollout.samples_per_prompt > 1
        if self.shared_rows and cfg.ppo.prompts_per_step % self.world:
            raise ValueError(f"ppo.share_prompt shards whole prompts: prompts_per_step ({cfg.ppo.prompts_per_step}) "
                             f"must split evenly into {self.world} ranks (or set ppo.share_prompt=false)")

        policy = load_policy(policy_path, cfg.policy.lora)
        self.ref = ReferencePolicy(policy, cfg.policy.lora.enabled)
        # RLOO needs no critic: its baseline is the other samples of the same prompt.
        critic = (load_critic(policy_path, cfg.critic.init, reward_model_path, cfg.critic.lora)
                  if cfg.ppo.advantage == "gae" else None)
        ds_cfg = _ds_config(cfg, cfg.ppo.minibatch_size)

        def engine_for(model, lr):
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=lr)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup(cfg.ppo.warmup_steps))
            eng, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched, config=ds_cfg)
            return eng

        self.actor = engine_for(policy, cfg.ppo.lr)
        self.critic = engine_for(critic, cfg.ppo.critic_lr) if critic is not None else None
        kl = cfg.ppo.kl
        self.kl_ctl = (AdaptiveKLController(kl.init, kl.target, kl.horizon) if kl.type == "adaptive"
                       else FixedKLController(kl.init))
        self.prompts = PromptStream(prompts, cfg.seed)
        self.step = 0
        self.weight_version = 0
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.tb = None

    # ------------------------------------------------------------------ setup helpers
    def start_logging(self) -> None:
        if self.rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(to_yaml(self.cfg))
        if self.cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        if self.cfg.logging.wandb:
            import wandb

            wandb.init(project=self.cfg.logging.wandb_project, name=self.cfg.name, config=asdict(self.cfg))

    # ------------------------------------------------------------------ 2-3. rollout and scoring (rank 0)
    def rollout_and_score(self, rows: list[dict]) -> ScoredRollout:
        """Steps 2-3 (rank 0): sample completions for ``rows``, then score each one."""
        timings = {}
        t = time.time()
        n = self.cfg.rollout.samples_per_prompt
        gens = self.engine.generate([r["conversation"] for r in rows], n=n, temperature=self.cfg.rollout.temperature,
                                    top_p=self.cfg.rollout.top_p, max_tokens=self.cfg.rollout.max_tokens,
                                    seed=step_seed(self.cfg.seed, self.step, "rollout"))
        timings["rollout"] = time.time() - t
        rollout = Rollout.from_generations([r for r in rows for _ in range(n)], gens)
        t = time.time()
        scored = self.reward_fn(rollout.conversations, rollout.texts, rollout.categories)
        timings["scoring"] = time.time() - t
        return ScoredRollout(rollout, scored.records(), timings)

    def dev_metrics(self, rows: list[dict]) -> dict:
        """The training reward of the policy's greedy answers to the dev split (rank 0), as ``dev/*`` metrics.
        The same prompts every time, so a rise is learning, not a luckier prompt mix; the reward's running
        statistics are not updated."""
        gens = self.engine.generate([r["conversation"] for r in rows], n=1, temperature=0.0,
                                    max_tokens=self.cfg.rollout.max_tokens)
        scored = self.reward_fn([r["conversation"] for r in rows], [g.text for g in gens],
                                [r.get("category") for r in rows], update_stats=False)
        r_rbr = scored.r_rbr[~np.isnan(scored.r_rbr)]
        m = {"dev/reward_total": float(np.mean(scored.raw_total)), "dev/rm": float(np.mean(scored.r_rm)),
             "dev/rbr": float(np.mean(r_rbr)) if len(r_rbr) else None,
             "dev/response_tokens": float(np.mean([len(g.token_ids) for g in gens])), "dev/n": len(rows)}
        if scored.r_safety is not None:
            r_safety = scored.r_safety[~np.isnan(scored.r_safety)]
            m["dev/safety_rm"] = float(np.mean(r_safety)) if len(r_safety) else None
        # Per response type, the share of greedy answers the reward's grader puts in the ideal class: the
        # style the RBR rewards, watched on training data (the held-out judge's Hard-Refusal-Style is not).
        ideal = defaultdict(list)
        for rt, top in zip(scored.response_types, scored.top_classes):
            if rt is not None:
                ideal[rt].append(top == self.rules.response_types[rt].ideal)
        for rt, hits in sorted(ideal.items()):
            m[f"dev/ideal/{rt}"] = float(np.mean(hits))
        return m

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (the trainer's ranks decide together: rollouts, stop requests)."""
        return broadcast_object(obj)

    @property
    def global_step(self) -> int:
        """Optimizer updates applied to the policy so far (DeepSpeed's counter; a PPO step makes several)."""
        return int(getattr(self.actor, "global_steps", 0))

    # ------------------------------------------------------------------ one PPO step
    def train_step(self) -> dict:
        cfg = self.cfg
        rows = self.prompts.next(cfg.ppo.prompts_per_step)
        scored = self.rollout_and_score(rows) if self.rank == 0 else None
        scored = self.broadcast(scored)
        rollout = scored.rollout
        timings = dict(scored.timings)
        k = cfg.rollout.samples_per_prompt
        shard = shard_indices(len(rollout), k if self.shared_rows else 1, self.rank, self.world)
        # Responses with no tokens cannot be trained on; give them one EOS token (the engine ended at once).
        resp = [rollout.response_ids[i] or [self.tokenizer.eos_token_id] for i in shard]
        prompt_ids = [rollout.prompt_ids[i] for i in shard]
        batch = pack_shared(prompt_ids, resp, self.pad_id, k) if self.shared_rows else pack(prompt_ids, resp, self.pad_id)
        # Tensors live where the engines' parameters do (the GPU on a GPU run; CPU otherwise).
        batch = batch.to(self.actor.device)
        scores = torch.tensor([r.total for r in scored.rewards], dtype=torch.float32)
        if cfg.ppo.advantage == "rloo":  # on the whole rollout: a prompt's samples may sit on different ranks
            scores = leave_one_out(scores, cfg.rollout.samples_per_prompt)
            if cfg.ppo.rloo_scale == "prompt":
                scores = scale_per_prompt(scores, cfg.rollout.samples_per_prompt)
        scores = scores[shard].to(self.actor.device)

        # 4. log pi_old, log pi_ref, V_old on exactly the sampled tokens
        t = time.time()
        with torch.no_grad():
            self.actor.eval()
            old_logprobs = self._chunked(lambda b: policy_forward(self.actor, b), batch)
            with self.ref.context(self.actor.module):
                ref_logprobs = self._chunked(lambda b: policy_forward(self.ref.model(self.actor.module), b), batch)
            if self.critic is not None:
                self.critic.eval()
                old_values = self._chunked(lambda b: critic_forward(self.critic, b), batch)
        timings["ref_critic_passes"] = time.time() - t
        mask = batch.resp_mask
        engine_lp = torch.zeros_like(old_logprobs)
        for k, i in enumerate(shard):
            lp = rollout.logprobs[i] or []
            engine_lp[k, : len(lp)] = torch.tensor(lp[: engine_lp.shape[1]], dtype=torch.float32)
        logprob_gap = masked_mean((engine_lp - old_logprobs).abs(), mask).item()

        # 5. rewards, advantages (GAE with the critic, or RLOO's reward-to-go), whitening
        rewards, kl = per_token_rewards(scores, old_logprobs, ref_logprobs, mask, self.kl_ctl.value)
        if self.critic is not None:
            advantages, returns = gae(old_values, rewards, mask, cfg.ppo.gamma, cfg.ppo.lam)
        else:
            advantages = reward_to_go(rewards, mask, cfg.ppo.gamma)
        if cfg.ppo.whiten_advantages:
            advantages = whiten(advantages, mask)

        # 6. PPO epochs over minibatches
        t = time.time()
        self.actor.train()
        if self.critic is not None:
            self.critic.train()
        stats = defaultdict(list)
        gen = torch.Generator().manual_seed(step_seed(cfg.seed, self.step, "minibatches"))
        for _ in range(cfg.ppo.epochs):
            for idx in minibatch_indices(batch, cfg.ppo.minibatch_size, cfg.ppo.minibatches, gen):
                mb = batch.select(idx)
                new_logprobs, entropy = policy_forward(self.actor, mb, with_entropy=True)
                pg_loss, pg_stats = policy_loss(new_logprobs, old_logprobs[idx], advantages[idx], mb.resp_mask, cfg.ppo.clip_range)
                ent = masked_mean(entropy, mb.resp_mask)
                loss = pg_loss - cfg.ppo.ent_coef * ent
                self.actor.backward(loss)
                self.actor.step()
                step_stats = {**pg_stats, "policy/loss": pg_loss.item(), "policy/entropy": ent.item()}
                if self.critic is not None:
                    values = critic_forward(self.critic, mb)
                    vf_loss, vf_stats = value_loss(values, old_values[idx], returns[idx], mb.resp_mask, cfg.ppo.clip_range_value)
                    self.critic.backward(cfg.ppo.vf_coef * vf_loss)
                    self.critic.step()
                    step_stats.update(vf_stats, **{"value/loss": vf_loss.item()})
                for k, v in step_stats.items():
                    stats[k].append(v)
        timings["training"] = time.time() - t

        mean_kl = masked_mean(kl, mask).item()
        seq_kl = (kl * mask).sum(1).mean().item()
        self.kl_ctl.update(all_reduce_mean(seq_kl), cfg.ppo.prompts_per_step * cfg.rollout.samples_per_prompt)

        # 7. weight sync
        t = time.time()
        self.sync_weights()
        timings["weight_sync"] = time.time() - t
        self.step += 1
        return self._metrics(scored, stats, mean_kl, seq_kl, logprob_gap, timings)

    def _chunked(self, fn, batch):
        return chunked_forward(fn, batch, self.cfg.ppo.minibatch_size)

    def sync_weights(self) -> None:
        """Push merged policy weights to the rollout engine (rank 0); every rank learns the new version.
        Under ZeRO-3 every rank joins the per-bucket gathers (``rollout.weight_sync_bucket_mb``)."""
        from ..rollout.weight_sync import push_weights

        version = push_weights(self.engine, self.actor.module, zero3=self.cfg.deepspeed.zero_stage == 3, rank=self.rank,
                               bucket_mb=self.cfg.rollout.weight_sync_bucket_mb)
        self.weight_version = self.broadcast(version)

    def resync_weights(self, engine=None, version: int | None = None) -> None:
        """Push the current weights again, e.g. to a restarted rollout server (``engine``, rank 0) or after a
        resume, under weight version ``version`` (default: the current one). The version names the
        weights, so re-pushing them restores it rather than counting a new one."""
        if engine is not None:
            self.engine = engine
        version = self.weight_version if version is None else version
        if self.engine is not None:
            self.engine.weight_version = version - 1
        self.sync_weights()

    # ------------------------------------------------------------------ metrics
    def _metrics(self, scored: ScoredRollout, stats, mean_kl, seq_kl, logprob_gap, timings) -> dict:
        rewards, rollout = scored.rewards, scored.rollout
        r_rbr = [r.r_rbr for r in rewards if r.r_rbr is not None]
        r_safety = [r.r_safety for r in rewards if r.r_safety is not None]
        m = {"step": self.step, "reward/total": float(np.mean(scored.scores)), "reward/rm": float(np.mean([r.r_rm for r in rewards])),
             "reward/rbr": float(np.mean(r_rbr)) if r_rbr else None, "reward/rbr_fraction": len(r_rbr) / len(rewards),
             "reward/safety_rm": float(np.mean(r_safety)) if r_safety else None,
             "kl/token_mean": mean_kl, "kl/sequence_mean": seq_kl, "kl/coef": self.kl_ctl.value,
             "logprob_gap/engine_vs_trainer": logprob_gap, "rollout/response_tokens": float(np.mean([len(r) for r in rollout.response_ids])),
             "weight_version": self.weight_version, "lr": self.actor.get_lr()[0]}
        for k, v in stats.items():
            m[k] = float(np.mean(v))
        classes = defaultdict(Counter)
        for r in rewards:
            if r.response_type is not None:
                classes[r.response_type][r.top_class] += 1
        for rt, counter in classes.items():
            total = sum(counter.values())
            for c, k in counter.items():
                m[f"classes/{rt}/{c}"] = k / total
        refused = [r.refused for r in rewards if r.refused is not None]
        m["safety/refusal_rate_comply"] = float(np.mean(refused)) if refused else None
        for k, v in timings.items():
            m[f"time/{k}"] = v
        m["samples"] = [{"category": c, "completion": t[:300], "reward": s}
                        for c, t, s in list(zip(rollout.categories, rollout.texts, scored.scores))[:2]]
        return m

    def log(self, m: dict) -> None:
        if self.rank != 0:
            return
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(m) + "\n")
        if self.tb is not None:
            for k, v in m.items():
                if isinstance(v, (int, float)) and v is not None and k != "step":
                    self.tb.add_scalar(k, v, m["step"])
            self.tb.flush()
        if self.cfg.logging.wandb:
            import wandb

            wandb.log({k: v for k, v in m.items() if isinstance(v, (int, float))}, step=m["step"])

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path | None:
        staging = ckpt.staging_dir(self.run_dir, self.step)
        if self.rank == 0:
            if staging.exists():  # left by a run killed mid-write: start clean, no stale files in the new one
                shutil.rmtree(staging)
            staging.mkdir(parents=True, exist_ok=True)
        d = process_group()
        if d is not None:
            d.barrier()
        self.actor.save_checkpoint(str(staging / "actor"), tag="state")
        if self.critic is not None:
            self.critic.save_checkpoint(str(staging / "critic"), tag="state")
        write_json(staging / f"rng_rank{self.rank}.json", _encode_rng(ckpt.rng_state()))
        if d is not None:
            d.barrier()
        if self.rank != 0:
            return None
        state = {"step": self.step, "prompts": self.prompts.state_dict(), "kl_controller": self.kl_ctl.state_dict(),
                 "reward_moments": self.reward_fn.moments.state_dict(), "weight_version": self.weight_version,
                 "world_size": self.world}
        write_json(staging / "trainer_state.json", state)
        (staging / "config.yaml").write_text(to_yaml(self.cfg))
        if self.rules.source and Path(self.rules.source).exists():
            (staging / "rules.yaml").write_text(Path(self.rules.source).read_text())
        if self.cfg.rbr.weights and Path(self.cfg.rbr.weights).exists():
            (staging / "rbr_weights.json").write_text(Path(self.cfg.rbr.weights).read_text())
        return ckpt.finalize(self.run_dir, self.step, {"step": self.step, **self.identity}, self.cfg.checkpoint.keep_last)

    def load_checkpoint(self, path: Path, force: bool = False) -> None:
        if not force:
            ckpt.check_identity(path, self.identity)
        self.actor.load_checkpoint(str(path / "actor"), tag="state")
        if self.critic is not None:
            if not (path / "critic").exists():
                raise ValueError(f"{path} has no critic (it was saved with ppo.advantage=rloo); resume it with "
                                 "ppo.advantage=rloo, or start a new run_dir")
            self.critic.load_checkpoint(str(path / "critic"), tag="state")
        state = json.loads((path / "trainer_state.json").read_text())
        self.step = state["step"]
        self.prompts.load_state_dict(state["prompts"])
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.reward_fn.moments.load_state_dict(state["reward_moments"])
        rng_file = path / f"rng_rank{self.rank}.json"
        if rng_file.exists():
            ckpt.set_rng_state(_decode_rng(json.loads(rng_file.read_text())))
        # The rollout server may have restarted or served other weights: push ours again, under the
        # checkpoint's weight version (the version names the weights, so re-pushing them restores it).
        self.resync_weights(version=state["weight_version"])
        self._truncate_metrics(self.step)
        log.warning("resumed from %s at step %d (rollout weight version now %s)", path, self.step, self.weight_version)

    def clear_metrics(self) -> None:
        """Start metrics.jsonl afresh (a run at step 0: lines of an attempt with no whole checkpoint go)."""
        self._truncate_metrics(-1)

    def _truncate_metrics(self, step: int) -> None:
        """Drop metrics lines of steps after the checkpoint: they are redone, and metrics.jsonl keeps one
        line per step. Written to a temporary file and renamed, so a crash here loses nothing."""
        if self.rank != 0 or not self.metrics_path.exists():
            return
        lines = self.metrics_path.read_text().splitlines()
        kept = [l for l in lines if l.strip() and _line_step(l) <= step]
        if len(kept) != len(lines):
            tmp = self.metrics_path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(l + "\n" for l in kept))
            os.replace(tmp, self.metrics_path)
            log.warning("metrics.jsonl: dropped %d line(s) after step %d (those steps are redone)", len(lines) - len(kept), step)

    def export_policy(self, out: Path) -> None:
        """The trained policy as a Hugging Face directory (LoRA merged)."""
        from .models import merged_policy_state_dict

        if self.rank != 0:
            return
        module = self.actor.module
        base = module.get_base_model() if hasattr(module, "get_base_model") else module
        state = merged_policy_state_dict(module)
        base.save_pretrained(out, state_dict=state, safe_serialization=True)
        self.tokenizer.save_pretrained(out)


def _line_step(line: str) -> int:
    """The step of a metrics.jsonl line; a line torn by a crash counts as after every checkpoint."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62

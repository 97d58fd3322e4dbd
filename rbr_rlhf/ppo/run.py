"""``rbr-rlhf train RECIPE [key=value ...]``: the RBR-PPO recipe, top to bottom.

  1. setup      run directory checked, process group, rule set, policy
  2. assets     rank 0 builds what is missing (helpful RM, classifier grader, evaluation judge, RBR
                weights; each cached at the path the recipe names), with the rollout engine up so the
                policy writes what needs its writing; then the grader service starts
  3. trainer    the reward (R_rm + w * R_rbr, + R_safety_rm for Human-PPO), the prompts, PPOTrainer
                (DeepSpeed actor and critic); resumed from a checkpoint when asked
  4. evaluate   the policy before training, by the recipe's judge (kept in RUN_DIR/eval-before.json, so
                a resumed run still reports it)
  5. train      PPO steps (ppo/trainer.py: rollout -> reward -> update -> weight sync), checkpoints,
                a stop request honoured between steps (SLURM's signals or RUN_DIR/STOP)
  6. finish     the policy after training, the exported policy, report.png and summary.json

Rank 0 drives rollouts, scoring and evaluation; every rank trains on its shard. The pieces live in
``assets``, ``services``, ``prompts``, ``rundir``, ``distributed`` and ``trainer``.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from .config import TrainConfig


def train(cfg: TrainConfig) -> dict:
    from tqdm import tqdm
    from transformers import AutoTokenizer

    from ..evaluation.evaluate import render_before_after
    from ..models import resolve_model
    from ..rm.model import RewardModel
    from ..rules import load_rules
    from . import checkpoint as ckpt
    from .assets import build_assets, ensure_reward_model, ensure_safety_reward_model, rbr_weights_fingerprint
    from .distributed import barrier, init_distributed, rank_and_world
    from .evaluate import RunEvaluation
    from .prompts import load_prompts, split_dev
    from .report import plot_metrics
    from .rewards import RewardFunction
    from .rundir import PhaseClock, StopRequest, check_run_dir, write_summary
    from .services import Services, step_with_recovery
    from .trainer import PPOTrainer

    # 1. setup
    clock = PhaseClock()  # wall seconds per phase, printed and kept in summary.json
    run_dir = Path(cfg.run_dir)
    check_run_dir(run_dir)
    init_distributed()
    rank, _ = rank_and_world()
    rules = load_rules(cfg.rbr.rules)
    policy_path = resolve_model(cfg.policy.model)
    summary: dict = {}
    if cfg.resume and not cfg.force_resume:
        # A resume that would be refused is refused now, before any service starts or model loads (when
        # the assets it names exist already; the trainer checks again after they are built).
        path = ckpt.latest(run_dir) if cfg.resume == "auto" else Path(cfg.resume)
        weights = cfg.rbr.weights if cfg.rbr.enabled else None
        if path is not None and (path / ckpt.MARKER).exists() and (not weights or Path(weights).exists()):
            ckpt.check_identity(path, ckpt.run_identity(rules, policy_path, cfg.reward_model.path,
                                                        rbr_weights_fingerprint(weights, rules),
                                                        cfg.safety_reward_model.path, cfg.ppo.advantage,
                                                        cfg.data.dev_prompts))
    with Services(cfg, rules, policy_path) as services:
        # 2. assets (rank 0), cached after the first run. The RM trains before the rollout server takes
        # memory; `rbr build` and the policy's answers to unsafe prompts write through the rollout server.
        if rank == 0:
            with clock("reward_model"):
                ensure_reward_model(cfg)
                ensure_safety_reward_model(cfg)
            with clock("rollout_server"):
                services.start_rollout()
            with clock("assets"):
                build_assets(cfg, rules, services.engine, clock)
            with clock("grader_service"):
                services.start_grader()
        barrier()

        # 3. the reward, the prompts, the trainer
        weights_fp = rbr_weights_fingerprint(cfg.rbr.weights if cfg.rbr.enabled else None, rules)
        rm_path = cfg.reward_model.path
        safety_rm = RewardModel(cfg.safety_reward_model.path) if rank == 0 and cfg.safety_reward_model.path else None
        reward_fn = RewardFunction(rules, RewardModel(rm_path) if rank == 0 else None, services.rbr, cfg.rbr.weight,
                                   cfg.rbr.benign_categories, cfg.ppo.reward_norm, cfg.ppo.reward_clip,
                                   safety_rm, cfg.safety_reward_model.weight)
        tokenizer = AutoTokenizer.from_pretrained(policy_path)
        prompts, eval_rows = load_prompts(cfg, rules, tokenizer)
        prompts, dev_rows = split_dev(prompts, cfg.data.dev_prompts, cfg.seed)
        trainer = PPOTrainer(cfg, rules, services.engine, reward_fn, prompts, tokenizer, policy_path, rm_path, weights_fp)
        trainer.start_logging()
        if cfg.resume:
            path = ckpt.latest(run_dir) if cfg.resume == "auto" else Path(cfg.resume)
            if path is not None:
                trainer.load_checkpoint(path, force=cfg.force_resume)
            elif rank == 0:
                print("[resume] no whole checkpoint yet: starting from step 0", flush=True)
        if rank == 0:
            print(f"[run] {run_dir}: resolved config saved to {run_dir / 'config.yaml'}", flush=True)

        # 4. evaluate before training
        evaluation = RunEvaluation(cfg, rules, eval_rows) if rank == 0 and cfg.eval_before_after and eval_rows else None
        before_file = run_dir / "eval-before.json"
        if evaluation is not None and cfg.evaluation.before:
            if trainer.step == 0:
                with clock("eval_before"):
                    summary["before"] = evaluation.run("before", services.engine, reward_fn)
                before_file.write_text(json.dumps(summary["before"], default=float))
            elif before_file.exists():  # resumed: the start was evaluated by the first attempt
                summary["before"] = json.loads(before_file.read_text())

        # 5. train (the dev split, when there is one, is scored before the first step and every few steps)
        dev_every = max(1, cfg.evaluation.dev_every)
        if rank == 0 and trainer.step == 0:
            trainer.clear_metrics()  # lines of an earlier attempt that died before its first whole checkpoint
            if dev_rows:
                with clock("dev", echo=False):
                    trainer.log({"step": 0, **trainer.dev_metrics(dev_rows)})
        bar = tqdm(total=cfg.total_steps, initial=trainer.step, desc="RBR-PPO", unit="step", file=sys.stderr,
                   disable=rank != 0)
        stop = StopRequest(run_dir).install()
        try:
            while trainer.step < cfg.total_steps:
                with clock("train", echo=False):
                    metrics = step_with_recovery(trainer, services)
                if rank == 0 and dev_rows and (trainer.step % dev_every == 0 or trainer.step == cfg.total_steps):
                    with clock("dev", echo=False):
                        metrics.update(trainer.dev_metrics(dev_rows))
                trainer.log(metrics)
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward/total']:.3f}", kl=f"{metrics['kl/sequence_mean']:.3f}")
                saved = trainer.step % cfg.checkpoint.every == 0 or trainer.step == cfg.total_steps
                if saved:
                    with clock("checkpoints", echo=False):
                        trainer.save_checkpoint()
                # Rank 0 decides for every rank, so all of them write the checkpoint and leave together.
                if trainer.step < cfg.total_steps and trainer.broadcast(stop.requested() if rank == 0 else None):
                    if not saved:
                        trainer.save_checkpoint()
                    stop.acknowledge(rank)
                    summary["stopped_at_step"] = trainer.step
                    break
        finally:
            stop.uninstall()
        bar.close()
        if "stopped_at_step" in summary:
            if rank == 0:
                why = signal.Signals(stop.signum).name if stop.signum else f"{stop.file} found"
                print(f"[run] stopped on request ({why}) after step {trainer.step} with a whole checkpoint; "
                      "continue with resume=auto", flush=True)
            return summary

        # 6. evaluate after training, export, report
        if rank == 0:
            if evaluation is not None:
                with clock("eval_after"):
                    summary["after"] = evaluation.run("after", services.engine, reward_fn)
                table = render_before_after({k: summary[k] for k in ("before", "after") if k in summary})
                if table:
                    summary["eval_table"] = table
                    print(f"[eval] judge {evaluation.spec!r}, 95% bootstrap intervals:\n{table}", flush=True)
            if cfg.checkpoint.export_hf:
                with clock("export"):
                    trainer.export_policy(run_dir / "policy")
            summary["plot"] = str(plot_metrics(run_dir / "metrics.jsonl", run_dir / "report.png"))
            summary["steps"] = trainer.step
            summary["seconds"] = clock.summary()
            path = write_summary(run_dir, summary)
            print(f"[run] done: summary {path}, plot {summary['plot']}, policy {run_dir / 'policy'}", flush=True)
            print("[time] " + ", ".join(f"{k} {v:.0f} s" for k, v in summary["seconds"].items()), flush=True)
    return summary

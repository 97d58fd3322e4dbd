"""``rbr-rlhf experiment run EXPERIMENT``: the arms of an experiment from one start, then their table.

  1. prepare   helpful-only data (``helpful.py``), then every asset any arm needs, built once with the
               base policy and cached where the recipe names it (helpful RM, Human-PPO's safety RM,
               classifier grader, judge, RBR weights with ``rbr build``, whose ideal completions are the
               SFT data), then ``rbr-rlhf sft``: the shared start. Skipped once the start exists.
  2. arms      each arm is ``rbr-rlhf train OUT_DIR/recipes/ARM.yaml`` (resume=auto) in a process of its
               own: an ordinary run directory (TensorBoard, checkpoints, report, summary.json). An arm
               with a summary of all its steps is skipped, an unfinished one resumes.
  3. table     every arm's evaluation after training (the first arm's evaluation of the start too), by
               the recipe's independent judge: OUT_DIR/table.md, table.json, table.png (``table.py``).

Rerunning the command skips what is done, so it is the way to continue after a stop or a crash.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from .config import ExperimentConfig, arm_config

STAGES = ("all", "prepare", "arms", "table")


def _record_time(cfg: ExperimentConfig, stage: str, seconds: float) -> None:
    """Wall time of each stage's latest attempt, in OUT_DIR/timings.json (the docs quote it)."""
    path = Path(cfg.out_dir) / "timings.json"
    times = json.loads(path.read_text()) if path.exists() else {}
    times[stage] = {"seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    path.write_text(json.dumps(times, indent=2))


def write_arm_recipes(cfg: ExperimentConfig) -> dict[str, Path]:
    """Each arm's resolved training recipe, OUT_DIR/recipes/ARM.yaml: what ``rbr-rlhf train`` (here or in
    a SLURM job) runs, and a record of exactly what the arm was."""
    from ..ppo.config import to_yaml

    out = Path(cfg.out_dir) / "recipes"
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for arm in cfg.arms:
        paths[arm] = out / f"{arm}.yaml"
        paths[arm].write_text(f"# experiment {cfg.name}, arm {arm}: {' '.join(cfg.arms[arm]) or '(the base recipe)'}\n"
                              + to_yaml(arm_config(cfg, arm)))
    return paths


# ---------------------------------------------------------------------------- 1. prepare
def ensure_helpful_data(cfg: ExperimentConfig) -> None:
    from ..data import write_jsonl
    from .helpful import evaluation_xstest_ids, helpful_pairs, helpful_sft_rows

    h = cfg.helpful
    if not h.data_root:
        return
    todo = [p for p in (h.pairs, h.sft_rows) if p and not Path(p).exists()]
    if not todo:
        return
    # Every XSTest prompt any arm evaluates stays out of the helpful data.
    exclude = set()
    for arm in cfg.arms:
        d = arm_config(cfg, arm).data
        exclude |= evaluation_xstest_ids(d.xstest, d.xstest_limit)
    if h.pairs and not Path(h.pairs).exists():
        pairs = helpful_pairs(h.data_root, exclude, h.seed)
        write_jsonl(h.pairs, pairs)
        print(f"[experiment] {len(pairs)} helpful-only preference pairs -> {h.pairs}", flush=True)
    if h.sft_rows and not Path(h.sft_rows).exists():
        rows = helpful_sft_rows(h.data_root, exclude)
        write_jsonl(h.sft_rows, rows)
        print(f"[experiment] {len(rows)} helpful SFT rows -> {h.sft_rows}", flush=True)


def build_shared_assets(cfg: ExperimentConfig) -> None:
    """Every arm's assets, built with the base policy (before SFT) through one rollout engine; each is a
    no-op when cached, so arms that share an asset build it once."""
    from ..models import resolve_model
    from ..ppo.assets import build_assets, ensure_reward_model, ensure_safety_reward_model
    from ..ppo.services import Services
    from ..rules import load_rules

    arms = [arm_config(cfg, arm, base_policy=True) for arm in cfg.arms]
    first = replace(arms[0], run_dir=str(Path(cfg.out_dir) / "prepare"))
    with Services(first, load_rules(first.rbr.rules), resolve_model(first.policy.model)) as services:
        for c in arms:  # the reward models train before the rollout server takes memory
            ensure_reward_model(c)
            ensure_safety_reward_model(c)
        services.start_rollout()
        for c in arms:
            build_assets(c, load_rules(c.rbr.rules), services.engine)


def train_start(cfg: ExperimentConfig) -> dict:
    from ..sft.train import SFTConfig, read_info, sft_done, train_sft

    s = cfg.sft
    sft_cfg = SFTConfig(data=list(s.data), out=s.out, base=s.base or cfg.train.policy.model, limit=s.limit,
                        max_length=s.max_length, max_prompt_tokens=s.max_prompt_tokens, epochs=s.epochs,
                        max_steps=s.max_steps, lr=s.lr, batch_size=s.batch_size, lora_r=s.lora_r,
                        target_modules=list(s.target_modules), seed=s.seed)
    if sft_done(s.out):
        info = read_info(s.out)
        check_same_settings(info.get("config", {}), sft_cfg, s.out)
        return info
    missing = [p for p in s.data if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"sft.data: {missing} not found (rbr build's sft.jsonl is written by the prepare stage)")
    print(f"[experiment] SFT start -> {s.out}", flush=True)
    info = train_sft(sft_cfg)
    print(f"[experiment] SFT: {info['examples']} rows, {info['steps']} steps, loss {info['first_loss']} -> "
          f"{info['last_loss']}", flush=True)
    return info


def check_same_settings(saved: dict, wanted, out: str) -> None:
    """An existing start must be the one the recipe asks for: arms trained from a start built with other
    settings would not be the experiment the recipe describes."""
    from dataclasses import asdict

    wanted = asdict(wanted)
    differ = sorted(k for k in wanted if k in saved and saved[k] != wanted[k] and k != "out")
    if differ:
        raise ValueError(f"the SFT start {out} was trained with other settings ({', '.join(f'sft.{k}: {saved[k]!r} there, {wanted[k]!r} now' for k in differ)}); "
                         "delete the directory to retrain it, or set sft.out to a new one")


def prepare(cfg: ExperimentConfig) -> None:
    from ..sft.train import sft_done

    if sft_done(cfg.sft.out):
        train_start(cfg)  # checks that the start was built with these settings
        print(f"[experiment] the start {cfg.sft.out} exists: assets and SFT already done", flush=True)
        return
    start = time.time()
    ensure_helpful_data(cfg)
    build_shared_assets(cfg)
    train_start(cfg)
    _record_time(cfg, "prepare", time.time() - start)


# ---------------------------------------------------------------------------- 2. arms
def arm_finished(cfg: ExperimentConfig, arm: str) -> bool:
    """A summary with all the arm's steps (a stopped run writes none)."""
    path = Path(cfg.out_dir) / arm / "summary.json"
    if not path.exists():
        return False
    return json.loads(path.read_text()).get("steps", -1) >= cfg.train.total_steps  # arms share the budget


def train_subprocess(recipe: Path) -> None:
    """``rbr-rlhf train RECIPE`` in a process of its own: each arm starts from clean memory and services."""
    cmd = [sys.executable, "-m", "rbr_rlhf.cli", "train", str(recipe)]
    print(f"[experiment] {' '.join(cmd)}", flush=True)
    rc = subprocess.run(cmd).returncode
    if rc != 0:
        raise RuntimeError(f"{recipe.stem} failed (exit {rc}); rerun the experiment to resume it (resume=auto)")


def run_arms(cfg: ExperimentConfig, runner: Callable[[Path], None] = train_subprocess,
             only: str | None = None) -> list[str]:
    """Train every unfinished arm, in the recipe's order; returns the arms trained now."""
    recipes = write_arm_recipes(cfg)
    done = []
    for arm, recipe in recipes.items():
        if only and arm != only:
            continue
        if arm_finished(cfg, arm):
            print(f"[experiment] {arm}: finished, skipped", flush=True)
            continue
        start = time.time()
        runner(recipe)
        _record_time(cfg, arm, time.time() - start)
        done.append(arm)
    return done


# ---------------------------------------------------------------------------- all
def run_experiment(cfg: ExperimentConfig, stage: str = "all", runner: Callable[[Path], None] = train_subprocess,
                   only: str | None = None) -> dict | None:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    from .table import write_table

    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    if stage in ("all", "prepare"):
        prepare(cfg)
    if stage in ("all", "arms"):
        run_arms(cfg, runner, only)
    if stage in ("all", "table"):
        return write_table(cfg)
    return None

"""``rbr-rlhf experiment slurm EXPERIMENT``: the experiment as SLURM jobs, the arms side by side.

  prepare   one job: ``experiment run --stage prepare`` (helpful data, shared assets, the SFT start)
  arms      one job per arm, after prepare (``--dependency=afterok``): the ordinary PPO job of
            ``rbr-rlhf launch slurm`` for OUT_DIR/recipes/ARM.yaml, requeued from its checkpoint when
            the time limit comes (``--requeue``, resume=auto)
  table     one job after every arm: ``experiment run --stage table``

Job resources come from the recipe's ``train.launch`` (``launch.*``: partition, time, GPUs, setup).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from .config import ExperimentConfig, resolve_experiment

SCRIPT = """#!/bin/bash
# Rendered by `rbr-rlhf experiment slurm` for experiment {name}: {what}
#SBATCH --job-name={job_name}
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
{resources}#SBATCH --chdir={workdir}
#SBATCH --output={logs}/{stage}-%j.log
#SBATCH --open-mode=append
set -euo pipefail
{setup}{env}exec {python} -m rbr_rlhf.cli experiment run {experiment} {overrides}--stage {stage}
"""


def _q(x) -> str:
    return shlex.quote(str(x))


def stage_script(cfg: ExperimentConfig, experiment: str, overrides: list[str], stage: str, gpus: bool,
                 time: str | None = None, partition: str | None = None, account: str | None = None) -> str:
    """The sbatch script of the prepare or table stage: one task running ``experiment run --stage``."""
    L = cfg.train.launch
    res = []
    if gpus and L.gpus_per_node:
        res.append(f"--gpus-per-node={L.gpus_per_node}")
    for key, value in (("cpus-per-task", L.cpus_per_task), ("mem", L.mem), ("partition", partition or L.partition),
                       ("time", time or L.time), ("account", account or L.account)):
        if value:
            res.append(f"--{key}={value}")
    res += list(L.sbatch_args)
    what = {"prepare": "helpful data, shared assets, the SFT start", "table": "the table of every arm"}[stage]
    return SCRIPT.format(
        name=cfg.name, what=what, job_name=f"{cfg.name}-{stage}", resources="".join(f"#SBATCH {r}\n" for r in res),
        workdir=_q(Path.cwd()), logs=_q(out_dir(cfg) / "logs"), stage=stage,
        setup=f"# launch.setup\n{L.setup}\n" if L.setup else "",
        env="".join(f"export {k}={_q(v)}\n" for k, v in L.env.items()), python=_q(L.python or sys.executable),
        experiment=_q(Path(resolve_experiment(experiment)).resolve()),
        overrides="".join(f"{_q(o)} " for o in overrides))


def out_dir(cfg: ExperimentConfig) -> Path:
    """The experiment's directory as every node sees it (a relative one goes under launch.shared_dir)."""
    out = Path(cfg.out_dir)
    if not out.is_absolute():
        out = Path(cfg.train.launch.shared_dir or Path.cwd()) / out
    return out.resolve()


def plan_jobs(cfg: ExperimentConfig, experiment: str, overrides: list[str], time: str | None = None,
              partition: str | None = None, account: str | None = None) -> list[dict]:
    """The jobs in submission order: {name, script, after (names of the jobs it waits for)}. Writes the
    arms' recipes (OUT_DIR/recipes/ARM.yaml), which the arm jobs run."""
    from dataclasses import replace

    from ..launch.slurm import plan, render
    from .run import write_arm_recipes

    cfg = replace(cfg, out_dir=str(out_dir(cfg)))  # absolute: the arms' run directories too
    overrides = [o for o in overrides if o.split("=", 1)[0] != "out_dir"] + [f"out_dir={cfg.out_dir}"]
    recipes = write_arm_recipes(cfg)
    jobs = [{"name": "prepare", "after": [],
             "script": stage_script(cfg, experiment, overrides, "prepare", True, time, partition, account)}]
    for arm, recipe in recipes.items():
        ctx = plan(str(recipe), [], requeue=True, time=time, partition=partition, account=account,
                   job_name=f"{cfg.name}-{arm}")
        jobs.append({"name": arm, "after": ["prepare"], "script": render(ctx)})
    jobs.append({"name": "table", "after": list(recipes), "script": stage_script(cfg, experiment, overrides, "table",
                                                                                  False, time, partition, account)})
    return jobs


def submit_jobs(cfg: ExperimentConfig, jobs: list[dict]) -> dict[str, str]:
    """Write each script under OUT_DIR/launch and submit it with ``--dependency=afterok`` on the jobs it
    waits for; returns name -> job id."""
    from ..launch.slurm import submit

    base = out_dir(cfg)
    (base / "logs").mkdir(parents=True, exist_ok=True)
    ids: dict[str, str] = {}
    for job in jobs:
        path = base / "launch" / f"{job['name']}.sbatch"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(job["script"])
        if job["name"] in cfg.arms:
            (base / job["name"] / "logs").mkdir(parents=True, exist_ok=True)  # the PPO job logs there
        after = [ids[n] for n in job["after"]]
        ids[job["name"]] = submit(path, dependency=f"afterok:{':'.join(after)}" if after else None)
        print(f"[experiment] submitted {job['name']}: job {ids[job['name']]} ({path})", flush=True)
    return ids

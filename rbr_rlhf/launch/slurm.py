"""``rbr-rlhf launch slurm RECIPE [key=value ...] --nodes N``: render the sbatch script, submit it.

The job (template: ``slurm.sbatch.j2`` beside this file, shipped as package data; ``launch/slurm.sbatch.j2``
at the top of the repository is the same file for people to copy and edit, and ``launch.sbatch_template``
or ``--sbatch-template`` points a job at the edited copy):

1. ``rbr-rlhf launch prepare``: builds the assets the recipe caches (no-op when present);
2. the rollout server (``rollout serve``, when ``rollout.engine=vllm`` and no ``rollout.url``) and the
   grader service (``grader serve``, when the RBR is on and no ``rbr.service_url``) on the first node,
   each an ``srun`` step with its own log, waited for until healthy;
3. the trainer: one ``torchrun`` per training node (``srun`` + ``torchrun``; rank 0 on the first training
   node), told the service URLs as ``rollout.url=... rbr.service_url=...`` overrides;
4. ``#SBATCH --signal=B:USR1@S``: the script turns the signal into ``RUN_DIR/STOP``, the trainer writes a
   checkpoint at the end of its step and exits, and with ``--requeue`` the job requeues itself and the
   next start adds ``resume=auto``.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

TEMPLATE = Path(__file__).with_name("slurm.sbatch.j2")


def _q(x) -> str:
    return shlex.quote(str(x))


def run_dir_for(cfg) -> Path:
    """The run directory every node uses: absolute; a relative one goes under ``launch.shared_dir``."""
    run_dir = Path(cfg.run_dir)
    if not run_dir.is_absolute():
        run_dir = Path(cfg.launch.shared_dir or Path.cwd()) / run_dir
    return run_dir.resolve()


def user_overrides(overrides: list[str], run_dir: Path) -> list[str]:
    """The command line's overrides, with ``run_dir`` replaced by the absolute one."""
    return [o for o in overrides if o.split("=", 1)[0] != "run_dir"] + [f"run_dir={run_dir}"]


def plan(recipe: str, overrides: list[str], nodes: int | None = None, requeue: bool = False,
         time: str | None = None, partition: str | None = None, account: str | None = None,
         job_name: str | None = None, sbatch_template: str | None = None) -> dict:
    """Everything the template needs, checked (bad keys, impossible node splits) before anything is written."""
    from ..ppo.config import load_config, resolve_recipe

    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"overrides must be key=value, got {bad}")
    cfg = load_config(recipe, overrides)
    L = cfg.launch
    template = Path(sbatch_template or L.sbatch_template or TEMPLATE)
    if not template.is_file():
        raise FileNotFoundError(f"sbatch template {template} does not exist (launch.sbatch_template / --sbatch-template)")
    n = nodes or L.nodes
    if n < 1:
        raise ValueError(f"--nodes must be at least 1, got {n}")
    if not 0 <= L.service_nodes < n:
        raise ValueError(f"launch.service_nodes={L.service_nodes} leaves no training node out of --nodes {n}")
    for key in L.env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(key)):
            raise ValueError(f"launch.env: {key!r} is not an environment variable name")
    start_rollout = cfg.rollout.engine == "vllm" and not cfg.rollout.url
    start_grader = cfg.rbr.enabled and not cfg.rbr.service_url
    if start_grader and not cfg.rbr.grader:
        raise ValueError("rbr.grader is not set: the job cannot start a grader service (or give rbr.service_url)")
    train_gpus = [g for g in L.train_gpus.split(",") if g.strip()]
    nproc = L.nproc_per_node or len(train_gpus) or L.gpus_per_node or 1
    train_nodes = n - L.service_nodes
    run_dir = run_dir_for(cfg)
    logs = run_dir / "logs"
    python = L.python or sys.executable
    recipe_path = str(Path(resolve_recipe(recipe)).resolve())
    ovr = user_overrides(list(overrides), run_dir)

    # The trainer's command, run by `bash -c` in each training task: it finds its node rank from the node
    # list, and reads the service URLs and RESUME from the environment the batch script exported.
    service_ovr = (['"rollout.url=$ROLLOUT_URL"'] if start_rollout else []) + \
                  (['"rbr.service_url=$GRADER_URL"'] if start_grader else [])
    if train_nodes == 1:
        rdzv = f"--standalone --nnodes=1 --nproc_per_node={nproc}"
    else:
        rdzv = (f"--nnodes={train_nodes} --nproc_per_node={nproc} --node_rank=$NODE_RANK "
                "--master_addr=$MASTER_ADDR --master_port=$MASTER_PORT")
    train_cmd = ("NODE_RANK=0; for n in $TRAIN_NODES; do [ \"$n\" = \"$SLURMD_NODENAME\" ] && break; "
                 "NODE_RANK=$((NODE_RANK+1)); done; "
                 f"exec {_q(python)} -m torch.distributed.run {rdzv} -m rbr_rlhf.cli train {_q(recipe_path)} "
                 + " ".join([*map(_q, ovr), *service_ovr, "$RESUME"]))
    grader_args = f"--rules {_q(cfg.rbr.rules)} --grader {_q(cfg.rbr.grader)}"
    if cfg.rbr.weights:
        grader_args += f" --weights {_q(cfg.rbr.weights)}"
    rollout_args = (f"--model {_q(cfg.policy.model)} --max-model-len {cfg.rollout.max_model_len} "
                    f"--kv-cache-gib {cfg.rollout.kv_cache_gib}")
    if cfg.rollout.weight_sync == "nccl" or (cfg.rollout.weight_sync == "auto" and L.gpus_per_node > 0):
        rollout_args += " --weight-transfer nccl"  # the trainer (rollout.weight_sync) broadcasts over NCCL
    return {
        "recipe_name": cfg.name, "job_name": job_name or f"rbr-{cfg.name}", "nodes": n, "service_nodes": L.service_nodes,
        "train_nodes": train_nodes, "nproc": nproc, "gpus_per_node": L.gpus_per_node, "cpus_per_task": L.cpus_per_task,
        "mem": L.mem, "partition": partition or L.partition, "time": time or L.time, "account": account or L.account,
        "exclusive": L.exclusive, "workdir": _q(Path.cwd()), "logs": str(logs), "run_dir": _q(run_dir),
        "signal_seconds": L.signal_seconds, "requeue": requeue, "sbatch_args": list(L.sbatch_args), "setup": L.setup,
        "env": [(k, _q(v)) for k, v in L.env.items()], "python": _q(python), "recipe_q": _q(recipe_path),
        "overrides": [_q(o) for o in ovr], "master_port": L.master_port,
        "start_rollout": start_rollout, "start_grader": start_grader,
        "rollout_note": f"rollout.url={cfg.rollout.url}" if cfg.rollout.url else f"rollout.engine={cfg.rollout.engine}",
        "grader_note": f"rbr.service_url={cfg.rbr.service_url}" if cfg.rbr.service_url else "rbr.enabled=false",
        "rollout_args": rollout_args, "grader_args": grader_args, "rollout_port": L.rollout_port,
        "grader_port": L.grader_port, "bind_host": "127.0.0.1" if n == 1 else (_q(L.bind_host) if L.bind_host else '"$SERVICE_NODE"'),
        "rollout_gpus": _q(L.rollout_gpus) if L.rollout_gpus else "", "grader_gpus": _q(L.grader_gpus) if L.grader_gpus else "",
        "train_gpus": _q(",".join(train_gpus)) if train_gpus else "", "service_timeout": 1800,
        "train_cmd_q": _q(train_cmd), "run_dir_path": run_dir, "template": template,
    }


def render(context: dict) -> str:
    """The sbatch script: ``context["template"]`` (the built-in one when absent) filled in with ``context``."""
    import jinja2

    # Bash uses "{#" (${#ARRAY[@]}): Jinja comments get delimiters bash never writes.
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False,
                             comment_start_string="{##", comment_end_string="##}")
    return env.from_string(Path(context.get("template") or TEMPLATE).read_text()).render(**context)


def submit(script: Path, env: dict | None = None, dependency: str | None = None) -> str:
    """``sbatch --parsable [--dependency=DEP] SCRIPT``; returns the job id."""
    dep = [f"--dependency={dependency}"] if dependency else []
    out = subprocess.run(["sbatch", "--parsable", *dep, str(script)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"sbatch failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip().split(";")[0]

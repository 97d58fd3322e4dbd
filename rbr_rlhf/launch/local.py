"""``rbr-rlhf launch local RECIPE [key=value ...]``: torchrun on this machine.

``torchrun --standalone --nproc_per_node N -m rbr_rlhf.cli train RECIPE ...`` with N from ``--nproc``,
``launch.nproc_per_node``, ``launch.train_gpus`` or the visible GPUs (1 on CPU); rank 0 starts the rollout
server and grader service as child processes (or connects to ``rollout.url`` / ``rbr.service_url``).
SIGUSR1 or SIGTERM to the launcher asks the trainer to checkpoint at the end of its step and stop
(through ``RUN_DIR/STOP``, which reaches every rank), the same contract as the SLURM job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def command(recipe: str, overrides: list[str], nproc: int | None = None) -> tuple[list[str], dict, Path]:
    from ..ppo.config import load_config
    from .slurm import run_dir_for, user_overrides

    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"overrides must be key=value, got {bad}")
    cfg = load_config(recipe, overrides)
    L = cfg.launch
    train_gpus = [g for g in L.train_gpus.split(",") if g.strip()]
    if nproc is None:
        nproc = L.nproc_per_node or len(train_gpus) or _gpu_count() or 1
    run_dir = run_dir_for(cfg)
    env = {str(k): str(v) for k, v in L.env.items()}
    if train_gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(train_gpus)
    python = L.python or sys.executable
    cmd = [python, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc_per_node={nproc}",
           "-m", "rbr_rlhf.cli", "train", recipe, *user_overrides(list(overrides), run_dir)]
    return cmd, env, run_dir


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # no torch build with CUDA: CPU ranks
        return 0


def run(cmd: list[str], env: dict, run_dir: Path) -> int:
    stop_file = run_dir / "STOP"

    def ask_to_stop(signum, frame):
        print(f"[launch] {signal.Signals(signum).name}: asking the trainer to checkpoint and stop", flush=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        stop_file.touch()

    previous = {s: signal.signal(s, ask_to_stop) for s in (signal.SIGUSR1, signal.SIGTERM)}
    try:
        stop_file.unlink(missing_ok=True)
        proc = subprocess.Popen(cmd, env={**os.environ, **env})
        while True:
            try:
                return proc.wait()
            except InterruptedError:  # pragma: no cover - wait() retries on EINTR itself (PEP 475)
                continue
    finally:
        for s, h in previous.items():
            signal.signal(s, h)

"""The process group of a PPO run: rank 0 of 1 in a plain process, or one rank of torchrun/deepspeed."""

from __future__ import annotations

import os


def process_group():
    """``torch.distributed`` when a process group is up, else None (a single process)."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def rank_and_world() -> tuple[int, int]:
    d = process_group()
    return (d.get_rank(), d.get_world_size()) if d else (0, 1)


def init_distributed() -> None:
    """DeepSpeed's process group: NCCL on GPUs, gloo on CPU. Works with the deepspeed launcher, torchrun,
    or a plain single process (rank 0 of 1)."""
    import deepspeed
    import torch

    from ..procs import free_port

    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend)


def barrier() -> None:
    d = process_group()
    if d is not None and d.get_world_size() > 1:
        d.barrier()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (pickled); returned as it is in a single process."""
    d = process_group()
    if d is None or d.get_world_size() == 1:
        return obj
    box = [obj]
    d.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(x: float) -> float:
    import torch

    d = process_group()
    if d is None or d.get_world_size() == 1:
        return x
    # NCCL reduces GPU tensors only; gloo CPU ones.
    device = f"cuda:{torch.cuda.current_device()}" if d.get_backend() == "nccl" else "cpu"
    t = torch.tensor([x], dtype=torch.float64, device=device)
    d.all_reduce(t)
    return (t / d.get_world_size()).item()

"""FLOP arithmetic for PPO phases, and a matrix-product reference measured on the same machine.

Counting convention (Kaplan et al.; what OpenRLHF/Megatron report): a dense transformer of N
parameters does about ``2 N`` FLOPs per token forward and ``4 N`` backward (``2 N`` for the activation
gradients, ``2 N`` for the weight gradients), so ``6 N`` per trained token. Attention's sequence-length
term is left out (small at these lengths). With LoRA the frozen weights get no weight gradients:
``4 N`` per trained token (plus the adapters' share, negligible at r=16). N counts every matrix that
multiplies activations: all parameters except the input embedding lookup, where the embedding is untied;
a tied embedding counts once, as the output projection.
"""

from __future__ import annotations

import time

import torch


def forward_flops(params: int, tokens: int) -> float:
    """Forward-only FLOPs: ``2 * params * tokens``."""
    return 2.0 * params * tokens


def train_flops(params: int, tokens: int, weight_grads: bool = True) -> float:
    """Forward + backward FLOPs: ``6 * params * tokens`` (``4 *`` when the weights get no gradients: LoRA)."""
    return (6.0 if weight_grads else 4.0) * params * tokens


def matmul_params(model) -> int:
    """Parameters that multiply activations: every unique parameter except an untied input embedding."""
    seen, total = set(), 0
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = emb is not None and out is not None and emb.weight is out.weight
    skip = {id(emb.weight)} if emb is not None and not tied else set()
    for p in model.parameters():
        if id(p) in seen or id(p) in skip:
            continue
        seen.add(id(p))
        total += getattr(p, "ds_numel", None) or p.numel()
    return total


def matmul_reference(m: int, k: int, n: int, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                     repeats: int = 5, warmup: int = 2) -> float:
    """FLOP/s of ``[m, k] @ [k, n]`` products on ``device`` in ``dtype``: the best of ``repeats`` timed runs
    (each a few products, so short ones are not lost in timer noise). ``2 m k n`` FLOPs per product."""
    device = torch.device(device)
    a = torch.randn(m, k, dtype=dtype, device=device)
    b = torch.randn(k, n, dtype=dtype, device=device)
    flops = 2.0 * m * k * n
    inner = max(1, int(2e9 // flops)) if device.type == "cpu" else max(1, int(2e12 // flops))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        a @ b
    sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            a @ b
        sync()
        best = min(best, (time.perf_counter() - t) / inner)
    return flops / best


def ppo_phase_flops(policy_params: int, critic_params: int, train_tokens: int, epochs: int, lora: bool) -> dict:
    """FLOPs of one PPO step's phases over ``train_tokens`` real (unpadded) tokens of the step's samples.

    passes:    log pi_old, log pi_ref (policy forward twice) and V_old (critic forward)
    training:  per epoch, policy and critic forward + backward
    """
    passes = 2 * forward_flops(policy_params, train_tokens) + forward_flops(critic_params, train_tokens)
    training = epochs * (train_flops(policy_params, train_tokens, not lora) + train_flops(critic_params, train_tokens, not lora))
    return {"passes": passes, "training": training}

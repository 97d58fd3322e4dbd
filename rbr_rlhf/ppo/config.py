"""PPO run configuration: small dataclasses (TRL style), filled from an OmegaConf recipe.

Recipes are YAML files (``recipes/``) merged over these defaults with ``key=value`` overrides from the
command line; an unknown key is an error naming the key (OmegaConf structured configs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import OmegaConf


@dataclass
class LoraSettings:
    enabled: bool = True
    r: int = 16
    alpha: int = 32
    target_modules: list = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class PolicyConfig:
    model: str = "smollm2"            # built-in alias, local directory, or hub name
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass
class CriticConfig:
    init: str = "policy"              # "policy" (LM backbone + new value head) or "reward_model" (its backbone and head)
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass
class RewardModelConfig:
    path: Optional[str] = None        # a sequence-classification directory; built by `build` below when missing
    build: dict = field(default_factory=dict)   # train-rm settings used on first use (data, base, limit, ...)


@dataclass
class RBRConfig:
    enabled: bool = True
    rules: str = "default"
    grader: Optional[str] = None      # grader spec for the grader service this run starts
    weights: Optional[str] = None     # rbr_weights.json; built by build-rbr when missing and `build` is set
    service_url: Optional[str] = None  # use a running grader service instead of starting one
    build: dict = field(default_factory=dict)   # {grader: train-classifier settings, weights: build-rbr settings}
    weight: float = 1.0               # R = R_rm + weight * R_rbr on safety prompts
    benign_categories: list = field(default_factory=lambda: ["None"])  # prompts scored by R_rm alone


@dataclass
class RolloutConfig:
    engine: str = "vllm"              # "vllm" (a rollout server) or "transformers" (in-process)
    url: Optional[str] = None         # connect to a running rollout server instead of starting one
    max_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    samples_per_prompt: int = 1
    max_model_len: int = 1024
    kv_cache_gib: int = 2


@dataclass
class DataConfig:
    safety_prompts: Optional[str] = None   # prompts with category/response type (JSONL...)
    benign_prompts: Optional[str] = None   # prompts with no safety response type (R = R_rm)
    benign_fraction: float = 0.5
    max_prompt_tokens: int = 256
    eval_prompts: Optional[str] = None     # held-out prompts with categories (safety metrics)
    eval_limit: int = 32
    xstest: Optional[str] = None           # xstest_prompts.csv
    xstest_limit: int = 24
    limit: Optional[int] = None


@dataclass
class KLConfig:
    type: str = "adaptive"            # "fixed" or "adaptive" (Ziegler et al.)
    init: float = 0.05
    target: float = 6.0
    horizon: int = 10000


@dataclass
class PPOSettings:
    prompts_per_step: int = 8
    epochs: int = 2
    minibatch_size: int = 4
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    gamma: float = 1.0
    lam: float = 0.95
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    whiten_advantages: bool = True
    max_grad_norm: float = 1.0
    lr: float = 1e-5
    critic_lr: float = 1e-5
    warmup_steps: int = 2
    kl: KLConfig = field(default_factory=KLConfig)
    reward_norm: bool = False         # running mean/std normalisation of the sequence reward
    reward_clip: Optional[float] = None


@dataclass
class DeepSpeedSettings:
    zero_stage: int = 2
    offload_optimizer: bool = False
    offload_param: bool = False


@dataclass
class CheckpointConfig:
    every: int = 1
    keep_last: int = 2
    export_hf: bool = True            # also write the final policy as a Hugging Face directory


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "rbr-rlhf"


@dataclass
class TrainConfig:
    name: str = "run"
    run_dir: str = "runs/run"
    seed: int = 0
    total_steps: int = 8
    resume: Optional[str] = None      # null, "auto" (newest whole checkpoint) or a checkpoint path
    force_resume: bool = False        # resume even if the rule set or models changed
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    rbr: RBRConfig = field(default_factory=RBRConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    data: DataConfig = field(default_factory=DataConfig)
    ppo: PPOSettings = field(default_factory=PPOSettings)
    deepspeed: DeepSpeedSettings = field(default_factory=DeepSpeedSettings)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval_before_after: bool = True


def load_config(recipe: str | None, overrides: list[str]) -> TrainConfig:
    """Defaults <- recipe YAML <- key=value overrides; unknown keys raise naming the key."""
    from omegaconf.errors import ConfigKeyError, ValidationError

    schema = OmegaConf.structured(TrainConfig)
    try:
        parts = [schema]
        if recipe:
            parts.append(OmegaConf.load(resolve_recipe(recipe)))
        parts.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(*parts)
    except (ConfigKeyError, ValidationError) as e:
        key = getattr(e, "full_key", None) or ""
        raise ValueError(f"bad configuration key {key!r}: {e.msg if hasattr(e, 'msg') else e}".split("\n")[0]) from None
    return OmegaConf.to_object(merged)


def resolve_recipe(recipe: str) -> str:
    from pathlib import Path

    path = Path(recipe)
    if path.exists():
        return str(path)
    for base in (Path.cwd() / "recipes", Path(__file__).resolve().parents[2] / "recipes"):
        for cand in (base / recipe, base / f"{recipe}.yaml"):
            if cand.exists():
                return str(cand)
    raise FileNotFoundError(f"recipe {recipe!r} not found (a YAML path, or a name in recipes/)")


def to_yaml(cfg: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))

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
    enabled: bool = True              # train LoRA adapters (false: full fine-tuning)
    r: int = 16                       # LoRA rank
    alpha: int = 32                   # LoRA scaling alpha
    target_modules: list = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])  # modules that get adapters


@dataclass
class PolicyConfig:
    model: str = "smollm2"            # built-in alias, local directory, or hub name
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass
class CriticConfig:
    init: str = "policy"              # "policy" (LM backbone + new value head) or "reward_model" (its backbone and head)
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass
class RewardModelBuild:
    """``rm train`` on first use, when ``reward_model.path`` is missing (fields of ``rm.train.RMTrainConfig``)."""
    data: Optional[str] = None        # preference pairs (HH-RLHF JSONL); null: nothing to build
    limit: Optional[int] = None       # read at most this many pairs
    eval_fraction: float = 0.1        # share of pairs held out for the pairwise accuracy
    base: str = "minilm"              # encoder or LM the reward model starts from
    max_length: int = 256             # tokens per dialogue
    epochs: float = 1.0               # training epochs
    lr: float = 5e-5                  # learning rate
    batch_size: int = 16              # pairs per batch
    lora: bool = False                # train LoRA adapters instead of the whole model
    lora_r: int = 16                  # LoRA rank
    seed: int = 0                     # training seed
    center_rewards_coefficient: float = 0.01   # keeps rewards centred on zero (TRL)


@dataclass
class RewardModelConfig:
    path: Optional[str] = None        # a sequence-classification directory; built by `build` below when missing
    build: RewardModelBuild = field(default_factory=RewardModelBuild)


@dataclass
class SafetyRewardModelConfig:
    """Human-PPO's second reward model, trained on people's safety preferences (e.g. the HH-RLHF harmless
    pairs): R = R_rm + weight * R_safety_rm on safety prompts (docs/experiment.md). Null path: none."""
    path: Optional[str] = None        # a sequence-classification directory; built by `build` below when missing
    weight: float = 1.0               # its weight on safety prompts
    build: RewardModelBuild = field(default_factory=RewardModelBuild)


@dataclass
class UnsafeAnswersBuild:
    """The policy's own labelled answers to unsafe prompts (``grader.realdata.ensure_generated``)."""
    path: Optional[str] = None        # JSONL cache of the answers; null: none
    data_root: Optional[str] = None   # data root holding the unsafe prompts (xstest/)
    samples: int = 2                  # answers per prompt
    max_tokens: int = 64              # new tokens per answer
    temperature: float = 1.0          # sampling temperature
    seed: int = 0                     # sampling seed


@dataclass
class GraderBuild:
    """The classifier grader ``rbr.grader: classifier:PATH``, trained on first use."""
    train: Optional[str] = None       # labelled rows (the gold train split); null: nothing to build
    real_data: Optional[str] = None   # a data root holding xstest/: add real models' answers (grader.realdata)
    lm: Optional[str] = "smollm2"     # LM features beside the encoder's ("none": encoder only)
    encoder: Optional[str] = None     # sentence encoder (null: the trainer's default, minilm)
    opening: Optional[bool] = None    # features of the completion's opening too (null: the trainer's default)
    seed: Optional[int] = None        # training seed (null: 0)


@dataclass
class WeightsBuild:
    """``rbr build`` on first use, when ``rbr.weights`` is missing: the fields of
    ``pipeline.build.BuildConfig`` except those the run fills in (out, grader, rm, rules)."""
    prompts: Optional[str] = None     # prompts with categories; null: nothing to build
    writer: str = "smollm2"           # the model that writes the comparison completions
    engine: str = "transformers"      # the writer's engine ("transformers" or "vllm"; the run's own server when writer = policy)
    prompt_classifier: str = "train"  # a directory, "train" (on prompts with categories) or "llm"
    limit_prompts: Optional[int] = None   # at most this many prompts
    samples_per_class: int = 1        # completions written per (prompt, class)
    max_rounds: int = 2               # rewriting rounds for classes not yet reached
    temperature: float = 0.9          # writer sampling temperature
    max_tokens: int = 96              # new tokens per written completion
    batch_size: int = 16              # writer batch size
    seed: int = 0                     # writer seed
    keep: str = "intended"            # "intended" (the paper) or "graded" (every candidate in its graded class)
    openings: Optional[str] = None    # writer strategies: null (class checklists) or "default"/a YAML path
    max_prompt_chars: int = 2000      # longer prompts (all turns) are left out
    ranking_data: Optional[str] = None     # data root for the reward-ranking check (xstest/)
    ranking_answers: Optional[str] = None  # labelled answers to unsafe prompts for that check
    fit: dict = field(default_factory=dict)   # rbr.fit.FitConfig fields


@dataclass
class RBRBuild:
    unsafe_answers: UnsafeAnswersBuild = field(default_factory=UnsafeAnswersBuild)
    grader: GraderBuild = field(default_factory=GraderBuild)
    weights: WeightsBuild = field(default_factory=WeightsBuild)


@dataclass
class RBRConfig:
    enabled: bool = True              # add the RBR term (false: R = R_rm everywhere)
    rules: str = "default"            # rule set: "default" or a YAML path
    grader: Optional[str] = None      # grader spec for the grader service this run starts
    weights: Optional[str] = None     # rbr_weights.json; built by `rbr build` when missing and `build` is set
    service_url: Optional[str] = None  # use a running grader service instead of starting one
    build: RBRBuild = field(default_factory=RBRBuild)   # what is built on first use: grader, weights, answers
    weight: float = 1.0               # R = R_rm + weight * R_rbr on safety prompts
    benign_categories: list = field(default_factory=lambda: ["None"])  # prompts scored by R_rm alone


@dataclass
class RolloutConfig:
    engine: str = "vllm"              # "vllm" (a rollout server) or "transformers" (in-process)
    url: Optional[str] = None         # connect to a running rollout server instead of starting one
    max_tokens: int = 48              # new tokens per completion
    temperature: float = 1.0          # sampling temperature
    top_p: float = 1.0                # nucleus sampling
    samples_per_prompt: int = 1       # completions per prompt
    max_model_len: int = 1024         # vLLM context length
    kv_cache_gib: int = 2             # vLLM CPU KV cache (VLLM_CPU_KVCACHE_SPACE)
    weight_sync: str = "auto"         # "auto" (NCCL when the trainer has CUDA and the server has NCCL weight transfer, else file), "file" or "nccl"
    weight_sync_bucket_mb: int = 512  # merged weights gathered (ZeRO-3) and sent this many MiB at a time
    nccl_address: Optional[str] = None  # host/IP the vLLM workers reach the trainer at for NCCL (null: loopback for a local server, else this host's name)

    def __post_init__(self):
        from ..rollout.weight_sync import MODES, check_nccl_address

        if self.weight_sync not in MODES:
            raise ValueError(f"rollout.weight_sync must be one of {', '.join(MODES)}, got {self.weight_sync!r}")
        if self.weight_sync_bucket_mb <= 0:
            raise ValueError(f"rollout.weight_sync_bucket_mb must be positive, got {self.weight_sync_bucket_mb}")
        self.nccl_address = check_nccl_address(self.nccl_address)


@dataclass
class DataConfig:
    safety_prompts: Optional[str] = None   # prompts with category/response type (JSONL...)
    benign_prompts: Optional[str] = None   # prompts with no safety response type (R = R_rm)
    max_prompt_tokens: int = 256      # longer (chat-templated) prompts are left out
    max_train_prompt_tokens: Optional[int] = None  # a tighter cap for training prompts only (null: max_prompt_tokens)
    eval_prompts: Optional[str] = None     # held-out prompts with categories (safety metrics)
    eval_limit: int = 32              # held-out prompts evaluated
    xstest: Optional[str] = None           # xstest_prompts.csv
    xstest_limit: int = 24            # XSTest prompts evaluated
    limit: Optional[int] = None       # read at most this many prompts per file
    dev_prompts: int = 0              # training prompts held out as a dev split (seeded); the training reward of the policy's greedy answers to them is logged as dev/* every evaluation.dev_every steps


@dataclass
class EvaluationConfig:
    """The before/after safety evaluation (``rbr-rlhf eval``'s code); prompts come from ``data.eval_*``/``data.xstest*``."""
    judge: Optional[str] = None       # grader spec of the judge, independent of the reward (null: the reward's grader, with a warning)
    before: bool = True               # also evaluate the starting policy (false: after training only, e.g. experiment arms sharing one start)
    build_judge: dict = field(default_factory=dict)   # train_judge settings, used when the judge classifier:PATH is missing
    max_tokens: Optional[int] = None  # new tokens per evaluation completion (null: rollout.max_tokens)
    resamples: int = 1000             # bootstrap resamples of each 95% interval
    seed: int = 0                     # bootstrap seed
    dev_every: int = 4                # score the dev split (data.dev_prompts) before training, every this many steps and at the end


@dataclass
class KLConfig:
    type: str = "adaptive"            # "fixed" or "adaptive" (Ziegler et al.)
    init: float = 0.05                # initial KL coefficient
    target: float = 6.0               # adaptive: target KL per sequence
    horizon: int = 10000              # adaptive: horizon in samples


@dataclass
class PPOSettings:
    prompts_per_step: int = 8         # prompts per PPO step (rollout batch)
    epochs: int = 2                   # PPO epochs over each batch
    minibatch_size: int = 4           # samples per minibatch, per rank
    minibatches: str = "random"       # random | by_length (minibatches of similar length, shuffled each epoch)
    share_prompt: bool = True         # with rollout.samples_per_prompt > 1: a prompt and its samples in one row, the prompt computed once (ppo/batch.py)
    clip_range: float = 0.2           # policy ratio clip
    clip_range_value: float = 0.2     # value clip
    advantage: str = "gae"            # gae (a critic, Schulman et al.) | rloo (no critic: leave-one-out baseline over rollout.samples_per_prompt >= 2)
    rloo_scale: str = "batch"         # rloo only: batch (whitening alone) | prompt (each prompt's advantages over its own std first, as GRPO)
    gamma: float = 1.0                # GAE discount
    lam: float = 0.95                 # GAE lambda
    vf_coef: float = 0.5              # value loss weight
    ent_coef: float = 0.0             # entropy bonus weight
    whiten_advantages: bool = True    # normalise advantages per batch
    max_grad_norm: float = 1.0        # gradient clipping
    lr: float = 1e-5                  # actor learning rate
    critic_lr: float = 1e-5           # critic learning rate
    warmup_steps: int = 2             # linear LR warm-up steps
    kl: KLConfig = field(default_factory=KLConfig)
    reward_norm: bool = False         # running mean/std normalisation of the sequence reward
    reward_clip: Optional[float] = None  # clip the sequence reward to [-x, x]

    def __post_init__(self):
        if self.minibatches not in ("random", "by_length"):
            raise ValueError(f"ppo.minibatches must be random or by_length, got {self.minibatches!r}")
        if self.advantage not in ("gae", "rloo"):
            raise ValueError(f"ppo.advantage must be gae or rloo, got {self.advantage!r}")
        if self.rloo_scale not in ("batch", "prompt"):
            raise ValueError(f"ppo.rloo_scale must be batch or prompt, got {self.rloo_scale!r}")


@dataclass
class DeepSpeedSettings:
    zero_stage: int = 2               # ZeRO stage: 2 or 3
    offload_optimizer: bool = False   # optimizer states on CPU
    offload_param: bool = False       # parameters on CPU (ZeRO-3 only)
    bf16: bool = False                # train in bfloat16 (DeepSpeed's bf16 mode; GPUs)


@dataclass
class CheckpointConfig:
    every: int = 1                    # checkpoint every N steps (and at the last)
    keep_last: int = 2                # whole checkpoints kept
    export_hf: bool = True            # also write the final policy as a Hugging Face directory


@dataclass
class LoggingConfig:
    tensorboard: bool = True          # RUN_DIR/tensorboard
    wandb: bool = False               # also log to Weights & Biases
    wandb_project: str = "rbr-rlhf"   # W&B project


@dataclass
class LaunchConfig:
    """Cluster specifics for ``rbr-rlhf launch slurm|local`` (``rbr-rlhf train`` itself ignores them)."""
    nodes: int = 1                        # default for --nodes
    service_nodes: int = 0                # nodes given to the rollout server and grader service alone (0: they share the first node)
    gpus_per_node: int = 0                # GPUs to request per node (0: CPU ranks)
    nproc_per_node: Optional[int] = None  # trainer ranks per training node (default: its training GPUs, or 1)
    rollout_gpus: str = ""                # CUDA_VISIBLE_DEVICES of the rollout server on its node, e.g. "0"
    grader_gpus: str = ""                 # CUDA_VISIBLE_DEVICES of the grader service
    train_gpus: str = ""                  # CUDA_VISIBLE_DEVICES of the trainer ranks (e.g. "1,2,3" beside a rollout GPU)
    master_port: int = 29500              # torchrun rendezvous port on the first training node
    rollout_port: int = 8800              # port of the rollout server the job starts
    grader_port: int = 8700               # port of the grader service the job starts
    bind_host: str = ""                   # where services listen in multi-node jobs ("": the service node's hostname, not 0.0.0.0; one node: 127.0.0.1)
    env: dict = field(default_factory=dict)   # exported for every role: NCCL_SOCKET_IFNAME, NCCL_IB_DISABLE, ...
    shared_dir: Optional[str] = None      # a directory all nodes see; a relative run_dir is placed under it
    setup: str = ""                       # shell lines run first in the job (module load ..., source venv/bin/activate)
    python: Optional[str] = None          # the interpreter with rbr-rlhf installed (default: the one launching)
    partition: Optional[str] = None       # sbatch --partition (the command line's --partition wins)
    time: Optional[str] = None            # sbatch --time, e.g. "04:00:00" (--time wins)
    account: Optional[str] = None         # sbatch --account (--account wins)
    cpus_per_task: Optional[int] = None   # sbatch --cpus-per-task
    mem: Optional[str] = None             # sbatch --mem, e.g. "200G"
    exclusive: bool = True                # whole nodes (#SBATCH --exclusive)
    signal_seconds: int = 120             # SIGUSR1 this long before the time limit: checkpoint, stop (and requeue)
    sbatch_args: list = field(default_factory=list)   # extra "#SBATCH ..." options, e.g. ["--qos=high"]
    sbatch_template: Optional[str] = None  # your own Jinja sbatch template (start from launch/slurm.sbatch.j2); --sbatch-template wins


@dataclass
class TrainConfig:
    name: str = "run"                 # run name (logs, W&B, job name)
    run_dir: str = "runs/run"         # metrics, checkpoints, logs, report, policy
    seed: int = 0                     # seeds prompts order, rollouts, minibatches
    total_steps: int = 8              # PPO steps
    resume: Optional[str] = None      # null, "auto" (newest whole checkpoint) or a checkpoint path
    force_resume: bool = False        # resume even if the rule set or models changed
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    safety_reward_model: SafetyRewardModelConfig = field(default_factory=SafetyRewardModelConfig)
    rbr: RBRConfig = field(default_factory=RBRConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    data: DataConfig = field(default_factory=DataConfig)
    ppo: PPOSettings = field(default_factory=PPOSettings)
    deepspeed: DeepSpeedSettings = field(default_factory=DeepSpeedSettings)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval_before_after: bool = True    # safety evaluation before and after training
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)

    def __post_init__(self):
        if self.ppo.advantage == "rloo" and self.rollout.samples_per_prompt < 2:
            raise ValueError("ppo.advantage=rloo compares the samples of one prompt: set rollout.samples_per_prompt "
                             f">= 2 (it is {self.rollout.samples_per_prompt})")
        k = self.rollout.samples_per_prompt
        if self.ppo.share_prompt and k > 1 and self.ppo.minibatch_size % k:
            raise ValueError(f"ppo.share_prompt puts a prompt and its {k} samples (rollout.samples_per_prompt) in one row, "
                             f"so ppo.minibatch_size ({self.ppo.minibatch_size}) must be a multiple of {k}; "
                             "or set ppo.share_prompt=false")


_ABSENT = object()
# Keys that recipes once had, with what to do instead: a recipe that still sets one fails naming it.
REMOVED_KEYS = {
    "data.benign_fraction": "it was never read: the training prompts are all of data.safety_prompts and "
                            "data.benign_prompts in one seeded shuffle. Delete the key (limit a set with data.limit)",
}


def load_config(recipe: str | None, overrides: list[str]) -> TrainConfig:
    """Defaults <- recipe YAML <- key=value overrides; unknown keys raise naming the key."""
    from omegaconf.errors import ConfigKeyError, ValidationError

    schema = OmegaConf.structured(TrainConfig)
    try:
        parts = [schema]
        if recipe:
            parts.append(OmegaConf.load(resolve_recipe(recipe)))
        parts.append(OmegaConf.from_dotlist(list(overrides)))
        for key, why in REMOVED_KEYS.items():
            if any(OmegaConf.select(p, key, default=_ABSENT, throw_on_missing=False) is not _ABSENT for p in parts[1:]):
                raise ValueError(f"configuration key {key!r} was removed: {why}")
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

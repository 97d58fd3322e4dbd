"""An experiment: one start, several PPO arms that differ only in their reward (``experiments/*.yaml``).

The YAML holds the whole experiment: ``train`` is an ordinary training recipe (``ppo.config.TrainConfig``;
every arm starts from it), ``arms`` maps each arm's name to the ``key=value`` overrides that make it that
arm, ``sft`` and ``helpful`` say how the shared start and the helpful-only data are built. Overrides from
the command line apply to the experiment (``train.total_steps=4``, ``sft.max_steps=10``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from ..ppo.config import TrainConfig


@dataclass
class HelpfulData:
    """Helpful-only data from the shared data (``experiment/helpful.py``): the helpful RM's preference
    pairs and helpful SFT rows. XSTest prompts the evaluation uses are left out of both."""
    data_root: Optional[str] = None   # holds rbr_gold/ and xstest/ (null: nothing to build)
    pairs: str = ".cache/experiment/helpful-pairs.jsonl"     # written on first use; train.reward_model.build.data reads it
    sft_rows: str = ".cache/experiment/helpful-sft.jsonl"    # written on first use; list it in sft.data
    seed: int = 0                     # which refusal / off-topic answer each pair gets


@dataclass
class ExperimentSFT:
    """The shared warm start: ``rbr-rlhf sft`` on the listed files (``sft.train.SFTConfig`` fields)."""
    out: str = ".cache/experiment/sft-policy"   # the policy directory every arm starts from (policy.model)
    data: list = field(default_factory=list)    # SFT files: rbr build's OUT/sft.jsonl, helpful rows, ...
    base: Optional[str] = None        # the model fine-tuned (null: train.policy.model)
    limit: Optional[int] = None       # at most this many rows per file
    max_length: int = 512             # tokens per example
    max_prompt_tokens: Optional[int] = None  # drop rows with longer prompts (null: keep all)
    epochs: float = 2.0               # passes over the rows
    max_steps: int = -1               # optimizer steps (-1: epochs decide)
    lr: float = 2e-4                  # learning rate (LoRA)
    batch_size: int = 8               # rows per step
    lora_r: int = 16                  # LoRA rank (0: full fine-tuning)
    target_modules: list = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])  # modules with LoRA adapters
    seed: int = 0                     # shuffling and initialisation


@dataclass
class ExperimentConfig:
    name: str = "experiment"          # experiment name (job names, table title)
    out_dir: str = "runs/experiment"  # one run directory per arm below it, the table, the plot
    train: TrainConfig = field(default_factory=TrainConfig)  # the recipe every arm starts from
    arms: dict = field(default_factory=dict)   # arm name -> list of key=value overrides of `train`
    start_row: str = "SFT start"      # the table's name for the shared start (evaluated once, by the first arm)
    helpful: HelpfulData = field(default_factory=HelpfulData)
    sft: ExperimentSFT = field(default_factory=ExperimentSFT)
    goals: list = field(default_factory=list)  # pre-registered comparisons, "ARM.METRIC > ARM.METRIC", checked on the table


def resolve_experiment(spec: str) -> str:
    """A YAML path, or a name in experiments/ (``smollm2-135m-cpu``)."""
    path = Path(spec)
    if path.exists():
        return str(path)
    for base in (Path.cwd() / "experiments", Path(__file__).resolve().parents[2] / "experiments"):
        for cand in (base / spec, base / f"{spec}.yaml"):
            if cand.exists():
                return str(cand)
    raise FileNotFoundError(f"experiment {spec!r} not found (a YAML path, or a name in experiments/)")


def load_experiment(spec: str | None, overrides: list[str] = ()) -> ExperimentConfig:
    """Defaults <- experiment YAML <- key=value overrides; unknown keys raise naming the key. The arms are
    checked here too (each must resolve to a valid training config), before anything runs."""
    from omegaconf.errors import ConfigKeyError, ValidationError

    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"overrides must be key=value, got {bad}")
    parts = [OmegaConf.structured(ExperimentConfig)]
    if spec:
        parts.append(OmegaConf.load(resolve_experiment(spec)))
    parts.append(OmegaConf.from_dotlist(list(overrides)))
    try:
        cfg: ExperimentConfig = OmegaConf.to_object(OmegaConf.merge(*parts))
    except (ConfigKeyError, ValidationError) as e:
        key = getattr(e, "full_key", None) or ""
        raise ValueError(f"bad experiment key {key!r}: {e.msg if hasattr(e, 'msg') else e}".split("\n")[0]) from None
    if not cfg.arms:
        raise ValueError("the experiment has no arms (arms: {NAME: [key=value, ...]})")
    for name, ovr in cfg.arms.items():
        if not isinstance(ovr, (list, tuple)) or any(not isinstance(o, str) or "=" not in o for o in ovr):
            raise ValueError(f"arms.{name}: a list of key=value overrides, got {ovr!r}")
    rms = {name: arm_config(cfg, name).reward_model.path for name in cfg.arms}  # a bad key fails now, naming the arm
    if len(set(rms.values())) > 1:
        # The table's "helpful RM on benign prompts" is every arm's R_rm: it must be one model.
        raise ValueError(f"every arm must share train.reward_model (the helpful RM); the arms set {rms}")
    return cfg


FIXED = ("policy.model", "run_dir", "seed", "total_steps", "data.", "resume")  # what an arm may not change


def arm_config(cfg: ExperimentConfig, arm: str, base_policy: bool = False) -> TrainConfig:
    """The training config of one arm: ``train`` <- the arm's overrides <- what every arm shares (the SFT
    start as the policy, its own run directory, resume=auto). Only the first arm evaluates the start.
    ``base_policy``: the policy before SFT (the shared assets are built with it)."""
    if arm not in cfg.arms:
        raise ValueError(f"no arm {arm!r}; the arms are {list(cfg.arms)}")
    ovr = list(cfg.arms[arm])
    fixed = [o for o in ovr if o.split("=", 1)[0].startswith(FIXED)]
    if fixed:
        raise ValueError(f"arms.{arm}: {fixed}: every arm has the same start, seed, prompts and step budget "
                         "(set them under train:)")
    first = next(iter(cfg.arms)) == arm
    shared = [f"name={cfg.name}-{arm}", f"run_dir={Path(cfg.out_dir) / arm}", "resume=auto",
              f"evaluation.before={'true' if first else 'false'}"]
    if not base_policy:
        shared.append(f"policy.model={cfg.sft.out}")
    schema = OmegaConf.structured(TrainConfig)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.structured(cfg.train), OmegaConf.from_dotlist(ovr + shared))
        return OmegaConf.to_object(merged)
    except Exception as e:  # noqa: BLE001  (OmegaConf's errors: one line naming the arm and the key)
        key = getattr(e, "full_key", None) or ""
        raise ValueError(f"arms.{arm}: bad key {key!r}: {getattr(e, 'msg', e)}".split("\n")[0]) from None

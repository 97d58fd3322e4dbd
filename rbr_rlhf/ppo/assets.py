"""The assets a recipe caches, built on first use (rank 0): ``rbr-rlhf train`` and ``launch prepare``.

Each ``ensure_*`` returns at once when its asset exists at the path the recipe names, so a second run
reuses it: the helpful reward model (and Human-PPO's safety reward model), the policy's own answers to
unsafe prompts, the classifier grader, the evaluation judge, and the RBR weights (``rbr build``). ``engine``, when given, is the run's rollout
engine: assets that need the policy's writing go through it instead of loading a second copy.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..data import read_rows
from .config import TrainConfig


@dataclass
class Assets:
    reward_model: str
    grader: str | None          # the reward's grader spec (None: RBR off)
    rbr_weights: str | None     # None: RBR off
    judge: str | None           # the evaluation judge spec (None: no before/after evaluation)


def build_assets(cfg: TrainConfig, rules, engine=None, clock=None) -> Assets:
    """Every asset the recipe needs, in dependency order (the weights need the grader and the RM).
    ``clock`` (a ``rundir.PhaseClock``) times each one; the grader's time includes the policy's answers to
    unsafe prompts when they are written first for it."""
    from .rundir import PhaseClock

    clock = clock or PhaseClock(quiet=True)
    memos: dict = {}  # the grader's and the judge's sentence features of the rows they share
    rm = ensure_reward_model(cfg)
    ensure_safety_reward_model(cfg)
    with clock("assets/grader"):
        grader = ensure_grader(cfg, rules, engine, memos) if cfg.rbr.enabled else None
    with clock("assets/judge"):
        judge = ensure_judge(cfg, rules, engine, memos) if cfg.eval_before_after else None
    with clock("assets/rbr_weights"):
        weights = ensure_rbr_weights(cfg, rules, cfg.rbr.grader, rm, engine)
    return Assets(rm, grader, weights, judge)


def rbr_weights_fingerprint(path: str | None, rules) -> str | None:
    """The weights' content hash (a checkpoint names the weights it was trained with), after checking
    that they were fitted for this rule set."""
    if not path:
        return None
    from ..rbr.model import RBRWeights

    RBRWeights.load(path, rules)  # refuses weights fitted for another rule set
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def ensure_reward_model(cfg: TrainConfig) -> str:
    """The helpful reward model (``reward_model``), trained on first use."""
    return _ensure_rm(cfg.reward_model.path, cfg.reward_model.build, "reward_model", "the helpful reward model")


def ensure_safety_reward_model(cfg: TrainConfig) -> str | None:
    """Human-PPO's safety reward model (``safety_reward_model``), trained on first use; None when unset."""
    if not cfg.safety_reward_model.path:
        return None
    return _ensure_rm(cfg.safety_reward_model.path, cfg.safety_reward_model.build, "safety_reward_model",
                      "the safety reward model")


def _ensure_rm(path: str | None, b, key: str, what: str) -> str:
    if path and (Path(path) / "config.json").exists():
        return path
    if not b.data:
        raise FileNotFoundError(f"{key} {path!r} not found and {key}.build.data is not set")
    from ..rm.text import load_pairs
    from ..rm.train import RMTrainConfig, split_pairs, train_reward_model

    print(f"[assets] training {what} -> {path} (first use)", flush=True)
    pairs = load_pairs(b.data, b.limit)
    train, held = split_pairs(pairs, b.eval_fraction)
    settings = {k: v for k, v in asdict(b).items() if k not in ("data", "limit", "eval_fraction")}
    info = train_reward_model(train, path, RMTrainConfig(**settings), held, {"labels": "original", "data": str(b.data)})
    print(f"[assets] {what}: held-out pairwise accuracy {info.get('eval_accuracy')}", flush=True)
    return path


def ensure_unsafe_answers(cfg: TrainConfig, engine=None) -> str | None:
    """The policy's own labelled answers to unsafe prompts (``rbr.build.unsafe_answers``), which teach the
    grader and the judge what a non-refusal to an unsafe request looks like (grader/realdata.py). Written
    through the run's rollout engine when there is one, else through a vLLM writer started here."""
    b = cfg.rbr.build.unsafe_answers
    if not b.path:
        return None
    if Path(b.path).exists():
        return b.path
    from ..grader.realdata import ensure_generated

    print(f"[assets] writing and labelling the policy's answers to unsafe prompts -> {b.path} (first use)", flush=True)
    start = time.perf_counter()
    rows = ensure_generated(b.path, b.data_root, engine=engine, writer_model=cfg.policy.model, samples=b.samples,
                            max_tokens=b.max_tokens, temperature=b.temperature, seed=b.seed)
    print(f"[assets] {len(rows)} labelled answers to unsafe prompts in {time.perf_counter() - start:.0f} s", flush=True)
    return b.path


def ensure_grader(cfg: TrainConfig, rules, engine=None, feature_memos: dict | None = None) -> str:
    """The reward's classifier grader, trained on first use: on labelled rows (``train``), plus real
    models' answers when ``real_data`` (a data root holding xstest/) is given."""
    spec = cfg.rbr.grader or ""
    kind, _, path = spec.partition(":")
    b = cfg.rbr.build.grader
    if kind != "classifier" or (Path(path) / "grader_config.json").exists() or not (b.train or b.real_data):
        return spec
    print(f"[assets] training the classifier grader -> {path} (first use)", flush=True)
    lm = None if b.lm in (None, "none") else b.lm
    given = {k: v for k, v in (("encoder", b.encoder), ("opening", b.opening), ("seed", b.seed)) if v is not None}
    if b.real_data:
        from ..grader.realdata import train_real_grader

        unsafe = ensure_unsafe_answers(cfg, engine)
        train_real_grader(rules, path, b.real_data, unsafe, role="reward", lm=lm, gold_train=b.train,
                          feature_memos=feature_memos, **given)
        return spec
    from ..grader.classifier import train_classifier

    train_classifier(rules, read_rows(b.train), path, lm=lm, source="recipe", **given)
    return spec


def ensure_judge(cfg: TrainConfig, rules, engine=None, feature_memos: dict | None = None) -> str | None:
    """The evaluation's judge (``evaluation.judge``). A ``classifier:PATH`` judge missing on disk is trained
    on first use by ``rbr_rlhf.grader.realdata.train_judge`` when ``evaluation.build_judge`` is given;
    anything else is returned as it is (a missing judge then fails when it is loaded, naming the path)."""
    spec = cfg.evaluation.judge
    if not spec:
        return None
    kind, _, path = spec.partition(":")
    build = dict(cfg.evaluation.build_judge or {})
    if kind != "classifier" or (Path(path) / "grader_config.json").exists() or not build:
        return spec
    try:
        from ..grader.realdata import train_judge
    except ImportError as e:
        raise RuntimeError(f"evaluation.judge {spec!r} does not exist and evaluation.build_judge is set, but this "
                           f"version cannot build judges (rbr_rlhf.grader.realdata.train_judge: {e})") from None
    if build.get("generated") and build["generated"] == cfg.rbr.build.unsafe_answers.path:
        ensure_unsafe_answers(cfg, engine)  # the judge learns from the policy's answers too (its own half)
    print(f"[assets] training the evaluation judge -> {path} (first use)", flush=True)
    train_judge(rules, out_dir=path, feature_memos=feature_memos, **build)
    return spec


def ensure_rbr_weights(cfg: TrainConfig, rules, grader_spec: str, rm_path: str, engine=None) -> str | None:
    if not cfg.rbr.enabled:
        return None
    path = Path(cfg.rbr.weights)
    if path.exists():
        return str(path)
    build = cfg.rbr.build.weights
    if not build.prompts:
        raise FileNotFoundError(f"RBR weights {path} not found and rbr.build.weights.prompts is not set")
    if build.ranking_answers and build.ranking_answers == cfg.rbr.build.unsafe_answers.path:
        ensure_unsafe_answers(cfg, engine)
    from ..pipeline.build import BuildConfig, BuildRBR

    out = str(path.parent)
    print(f"[assets] building RBR weights with rbr build -> {out} (first use)", flush=True)
    bcfg = BuildConfig(out=out, grader=grader_spec, rm=rm_path, rules=cfg.rbr.rules, **asdict(build))
    writer = None
    if engine is not None and bcfg.writer == cfg.policy.model:
        from ..pipeline.writer import EngineWriter

        writer = EngineWriter(engine)  # the policy's own rollout server writes: no second model in memory
        print("[assets] rbr build writes through the run's rollout engine", flush=True)
    report = BuildRBR(bcfg, rules, force=True, writer=writer).run()
    print(f"[assets] rbr build kept {report['kept']} comparisons; error rates {report.get('fit', {}).get('error_rate')}",
          flush=True)
    return str(path)

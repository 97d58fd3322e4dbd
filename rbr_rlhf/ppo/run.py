"""``rbr-rlhf train RECIPE [key=value ...]``: assets, services, the PPO loop, evaluation, report.

Rank 0 builds what is missing (helpful RM, classifier grader, RBR weights: each cached at the path the
recipe names, so a second run reuses them), starts the rollout server and the grader service as child
processes (or connects to given URLs), and drives rollouts; every rank trains.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

from ..data import read_rows
from .config import TrainConfig

log = logging.getLogger(__name__)


def check_run_dir(run_dir: Path, min_free_gib: float = 2.0) -> None:
    """Fail before any training if the run directory is unwritable or the disk is (nearly) full."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        # A probe file of this process's own: every rank checks the same directory at once.
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-probe-") as probe:
            probe.write(b"ok")
            probe.flush()
    except OSError as e:
        raise RuntimeError(f"run directory {run_dir} is not writable: {e}") from None
    free = shutil.disk_usage(run_dir).free / 2 ** 30
    if free < min_free_gib:
        raise RuntimeError(f"only {free:.1f} GiB free under {run_dir}; checkpoints need at least {min_free_gib} GiB")


class StopRequest:
    """"Checkpoint at the end of this step and exit", asked for by a signal or a file.

    SLURM sends SIGTERM at the time limit or on preemption (and SIGUSR1 when the job asks for it with
    ``--signal``); the sbatch script of ``rbr-rlhf launch slurm`` turns its own early SIGUSR1 into a file
    named ``STOP`` in the run directory, which reaches every launcher (torchrun would not forward SIGUSR1).
    The handler only sets a flag: the step in flight finishes, a checkpoint is written, the run returns,
    and ``resume=auto`` continues from there. A second signal stops at once (the default action).
    Installed only around the training loop, so asset building and evaluation keep the default handlers.
    """

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self, run_dir: Path):
        self.file = Path(run_dir) / "STOP"
        self.signum: int | None = None
        self._previous: dict = {}

    def install(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            self.uninstall()
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        print(f"[run] {signal.Signals(signum).name}: writing a checkpoint at the end of this step, then stopping "
              "(send it again to stop at once)", flush=True)

    def requested(self) -> bool:
        return self.signum is not None or self.file.exists()

    def acknowledge(self, rank: int) -> None:
        if rank == 0:
            self.file.unlink(missing_ok=True)

    def uninstall(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


# ---------------------------------------------------------------------------- assets (rank 0)
def ensure_reward_model(cfg: TrainConfig) -> str:
    path = cfg.reward_model.path
    if path and (Path(path) / "config.json").exists():
        return path
    if not cfg.reward_model.build:
        raise FileNotFoundError(f"reward model {path!r} not found and reward_model.build is empty")
    from ..rm.cli import load_pairs
    from ..rm.train import RMTrainConfig, split_pairs, train_reward_model

    b = dict(cfg.reward_model.build)
    print(f"[assets] training the helpful reward model -> {path} (first use)", flush=True)
    pairs = load_pairs(b.pop("data"), b.pop("limit", None))
    train, held = split_pairs(pairs, b.pop("eval_fraction", 0.1))
    info = train_reward_model(train, path, RMTrainConfig(**b), held, {"labels": "original"})
    print(f"[assets] reward model held-out pairwise accuracy {info.get('eval_accuracy')}", flush=True)
    return path


def ensure_unsafe_answers(cfg: TrainConfig, engine=None) -> str | None:
    """The policy's own labelled answers to unsafe prompts (``rbr.build.unsafe_answers``), which teach the
    grader and the judge what a non-refusal to an unsafe request looks like (grader/realdata.py). Written
    through the run's rollout engine when there is one, else through a vLLM writer started here."""
    build = dict(cfg.rbr.build.get("unsafe_answers") or {})
    if not build:
        return None
    path = build.pop("path")
    if Path(path).exists():
        return path
    from ..grader.realdata import ensure_generated

    print(f"[assets] writing and labelling the policy's answers to unsafe prompts -> {path} (first use)", flush=True)
    ensure_generated(path, build.pop("data_root"), engine=engine, writer_model=cfg.policy.model, **build)
    return path


def ensure_grader(cfg: TrainConfig, rules, engine=None) -> str:
    """The reward's classifier grader, trained on first use: on labelled rows (``train``), plus real
    models' answers when ``real_data`` (a data root holding xstest/) is given."""
    spec = cfg.rbr.grader or ""
    kind, _, path = spec.partition(":")
    build = dict(cfg.rbr.build.get("grader", {}))
    if kind != "classifier" or (Path(path) / "grader_config.json").exists() or not build:
        return spec
    print(f"[assets] training the classifier grader -> {path} (first use)", flush=True)
    lm = build.pop("lm", "smollm2")
    lm = None if lm in (None, "none") else lm
    if build.get("real_data"):
        from ..grader.realdata import train_real_grader

        unsafe = ensure_unsafe_answers(cfg, engine)
        train_real_grader(rules, path, build.pop("real_data"), unsafe, role="reward", lm=lm,
                          gold_train=build.pop("train"), **build)
        return spec
    from ..grader.classifier import train_classifier

    rows = read_rows(build.pop("train"))
    train_classifier(rules, rows, path, lm=lm, source="recipe", **build)
    return spec


def ensure_judge(cfg: TrainConfig, rules, engine=None) -> str | None:
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
    if build.get("generated") and build["generated"] == (cfg.rbr.build.get("unsafe_answers") or {}).get("path"):
        ensure_unsafe_answers(cfg, engine)  # the judge learns from the policy's answers too (its own half)
    print(f"[assets] training the evaluation judge -> {path} (first use)", flush=True)
    train_judge(rules, out_dir=path, **build)
    return spec


class RunEvaluation:
    """The run's before/after evaluation (rank 0): ``rbr-rlhf eval``'s code with the recipe's judge.

    Without evaluation semantics in the rule set, or without any judge, it warns once and is skipped.
    With no ``evaluation.judge`` it falls back to the reward's grader and says the result is not
    independent of the reward. The judge is loaded on first use.
    """

    def __init__(self, cfg: TrainConfig, rules, rows: list[dict]):
        from ..evaluation.evaluate import independence

        self.cfg, self.rules, self.rows = cfg, rules, rows
        self.reward_grader = cfg.rbr.grader if cfg.rbr.enabled else None
        self.spec = cfg.evaluation.judge or self.reward_grader
        self.judge = None
        self.skip: str | None = None
        if rules.evaluation is None:
            self.skip = (f"the rule set {rules.name!r} ({rules.source}) has no 'evaluation:' section, so the run "
                         "cannot say what counts as a refusal or as unsafe: skipping the safety evaluation. Add the "
                         "section (docs/rules.md, 'Evaluation semantics') to get the before/after table.")
        elif not self.spec:
            self.skip = "no judge (evaluation.judge is unset and the RBR is off): skipping the safety evaluation"
        if self.skip:
            print(f"[eval] warning: {self.skip}", flush=True)
        elif not cfg.evaluation.judge:
            print(f"[eval] warning: evaluation.judge is unset: the reward's own grader {self.spec!r} judges, so the "
                  "evaluation is NOT independent of the reward (set evaluation.judge; docs/evaluation.md)", flush=True)
        else:
            independence(self.spec, self.reward_grader)

    def run(self, stage: str, engine, reward_fn) -> dict:
        from ..evaluation.evaluate import render_markdown
        from ..grader.factory import build_grader
        from .evaluate import evaluate_policy

        if self.skip:
            return {"skipped": self.skip}
        if self.judge is None:
            self.judge = build_grader(self.spec, self.rules)
        e = self.cfg.evaluation
        result = evaluate_policy(engine, self.rows, self.judge, self.rules, e.max_tokens or self.cfg.rollout.max_tokens,
                                 reward_fn=reward_fn, judge_spec=self.spec, reward_grader=self.reward_grader,
                                 resamples=e.resamples, seed=e.seed)
        print(render_markdown(result, title=f"[eval] {stage}"), flush=True)
        return result


def ensure_rbr_weights(cfg: TrainConfig, rules, grader_spec: str, rm_path: str, engine=None) -> str | None:
    if not cfg.rbr.enabled:
        return None
    path = Path(cfg.rbr.weights)
    if path.exists():
        return str(path)
    build = dict(cfg.rbr.build.get("weights", {}))
    if not build:
        raise FileNotFoundError(f"RBR weights {path} not found and rbr.build.weights is empty")
    if build.get("ranking_answers") and build["ranking_answers"] == (cfg.rbr.build.get("unsafe_answers") or {}).get("path"):
        ensure_unsafe_answers(cfg, engine)
    from ..pipeline.build import BuildConfig, BuildRBR

    out = str(path.parent)
    print(f"[assets] building RBR weights with build-rbr -> {out} (first use)", flush=True)
    fit = build.pop("fit", {})
    bcfg = BuildConfig(out=out, grader=grader_spec, rm=rm_path, rules=cfg.rbr.rules, fit=fit, **build)
    writer = None
    if engine is not None and bcfg.writer == cfg.policy.model:
        from ..pipeline.writer import EngineWriter

        writer = EngineWriter(engine)  # the policy's own rollout server writes: no second model in memory
        print("[assets] build-rbr writes through the run's rollout engine", flush=True)
    report = BuildRBR(bcfg, rules, force=True, writer=writer).run()
    print(f"[assets] build-rbr kept {report['kept']} comparisons; error rates {report.get('fit', {}).get('error_rate')}",
          flush=True)
    return str(path)


def _fits(tokenizer, max_tokens: int):
    from ..rollout.types import chat_prompt_ids

    return lambda r: len(chat_prompt_ids(tokenizer, r["conversation"])) <= max_tokens


def load_prompts(cfg: TrainConfig, rules, tokenizer=None) -> tuple[list[dict], list[dict]]:
    """Training and evaluation prompts. Prompts longer than ``data.max_prompt_tokens`` (chat-templated)
    are left out: on CPU one long multi-turn prompt costs more than the rest of the batch."""
    from ..evaluation.evaluate import load_prompt_rows, load_xstest
    from ..pipeline.prompts import load_prompt_set

    rows = []
    if cfg.data.safety_prompts:
        rows += load_prompt_set(cfg.data.safety_prompts, limit=cfg.data.limit)
    if cfg.data.benign_prompts:
        rows += [{**r, "category": None} for r in load_prompt_set(cfg.data.benign_prompts, limit=cfg.data.limit)]
    eval_rows = []
    if cfg.data.eval_prompts:  # every prompt by its response type, "None" (comply) included
        eval_rows += load_prompt_rows(cfg.data.eval_prompts, rules, cfg.data.eval_limit)
    if cfg.data.xstest:
        eval_rows += load_xstest(cfg.data.xstest, cfg.data.xstest_limit, rules)
    if tokenizer is not None and cfg.data.max_prompt_tokens:
        fits = _fits(tokenizer, cfg.data.max_prompt_tokens)
        kept = [r for r in rows if fits(r)]
        log.warning("%d of %d training prompts fit in data.max_prompt_tokens=%d", len(kept), len(rows), cfg.data.max_prompt_tokens)
        rows, eval_rows = kept, [r for r in eval_rows if fits(r)]
    return rows, eval_rows


# ---------------------------------------------------------------------------- services (rank 0)
class Services:
    """The rollout engine and the RBR scorer, started here or connected to."""

    def __init__(self, cfg: TrainConfig, rules, policy_path: str, grader_spec: str, weights_path: str | None):
        self.cfg, self.rules = cfg, rules
        self.policy_path, self.grader_spec, self.weights_path = policy_path, grader_spec, weights_path
        self.logs = Path(cfg.run_dir) / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.rollout_server = self.grader_process = None
        self.engine = self.rbr = None

    def start_grader(self) -> None:
        if self.cfg.rbr.enabled:
            from ..service.client import GraderClient

            url = self.cfg.rbr.service_url
            if not url:
                from ..service.server import GraderProcess

                print("[services] starting the grader service", flush=True)
                self.grader_process = GraderProcess(self.cfg.rbr.rules, self.grader_spec, self.weights_path,
                                                    log_path=self.logs / "grader.log").start()
                url = self.grader_process.url
            self.rbr = GraderClient(url, token=os.environ.get("RBR_GRADER_TOKEN"))

    def start_rollout(self) -> None:
        r = self.cfg.rollout
        if r.engine == "transformers":
            from ..rollout.hf_engine import TransformersEngine

            self.engine = TransformersEngine(self.policy_path)
            return
        from ..rollout.vllm_server import VLLMEngine, VLLMServer
        from ..rollout.weight_sync import make_transport, server_launch_transfer
        import torch

        url = r.url
        if not url:
            print("[services] starting the vLLM rollout server", flush=True)
            self.rollout_server = VLLMServer(self.policy_path, max_model_len=r.max_model_len, kv_cache_gib=r.kv_cache_gib,
                                             log_path=str(self.logs / "rollout.log"),
                                             weight_transfer=server_launch_transfer(r.weight_sync, torch.cuda.is_available())).start()
            url = self.rollout_server.url
        # Our own server shares this host: the transport's RAM directory. A server given by URL may be on
        # another node: the run directory, which a cluster job keeps on the shared filesystem.
        sync_dir = None if self.rollout_server is not None else str(Path(self.cfg.run_dir) / "weight_sync")
        transport = make_transport(r, url, self_started=self.rollout_server is not None, sync_dir=sync_dir)
        self.engine = VLLMEngine(url, self.policy_path, transport=transport)

    def restart_rollout(self) -> bool:
        """After the rollout server died: start a new one (only if we own it). Returns whether we did."""
        if self.rollout_server is None:
            return False
        print(f"[services] the rollout server died; its log ends with:\n{self.rollout_server.log_tail(10)}", flush=True)
        self.rollout_server.stop()
        self.engine.close()
        self.start_rollout()
        return True

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.close()
        for proc in (self.rollout_server, self.grader_process):
            if proc is not None:
                proc.stop()


# ---------------------------------------------------------------------------- the run
def train(cfg: TrainConfig) -> dict:
    from tqdm import tqdm
    from transformers import AutoTokenizer

    from ..models import resolve_model
    from ..rm.model import RewardModel
    from ..rules import load_rules
    from ..evaluation.evaluate import render_before_after
    from . import checkpoint as ckpt
    from .report import plot_metrics
    from .rewards import RewardFunction
    from .trainer import PPOTrainer, _dist, init_distributed, rank_and_world

    run_dir = Path(cfg.run_dir)
    check_run_dir(run_dir)
    init_distributed()
    rank, world = rank_and_world()
    rules = load_rules(cfg.rbr.rules)
    policy_path = resolve_model(cfg.policy.model)
    d = _dist()
    rm_path, grader_spec = cfg.reward_model.path, cfg.rbr.grader
    weights_path = cfg.rbr.weights if cfg.rbr.enabled else None
    services = Services(cfg, rules, policy_path, grader_spec, weights_path)
    summary: dict = {}
    try:
        if rank == 0:
            # Assets first (cached after the first run), with the rollout server up so build-rbr can
            # write through it; then the grader service, which needs the weights.
            # The policy's answers to unsafe prompts, when an asset to build needs them, are written
            # through the run's rollout server (ensure_unsafe_answers).
            ensure_reward_model(cfg)
            services.start_rollout()
            if cfg.rbr.enabled:
                ensure_grader(cfg, rules, services.engine)
            if cfg.eval_before_after:
                ensure_judge(cfg, rules, services.engine)
            ensure_rbr_weights(cfg, rules, grader_spec, rm_path, services.engine)
            services.start_grader()
        if d is not None and world > 1:
            d.barrier()
        weights_fp = None
        if weights_path:
            from ..rbr.model import RBRWeights
            import hashlib

            weights_fp = hashlib.sha256(Path(weights_path).read_bytes()).hexdigest()[:16]
            RBRWeights.load(weights_path, rules)  # refuses weights fitted for another rule set
        reward_fn = RewardFunction(rules, RewardModel(rm_path) if rank == 0 else None, services.rbr,
                                   cfg.rbr.weight, cfg.rbr.benign_categories, cfg.ppo.reward_norm, cfg.ppo.reward_clip)
        tokenizer = AutoTokenizer.from_pretrained(policy_path)
        prompts, eval_rows = load_prompts(cfg, rules, tokenizer)
        trainer = PPOTrainer(cfg, rules, services.engine, reward_fn, prompts, tokenizer, policy_path, rm_path, weights_fp)
        trainer.start_logging()

        if cfg.resume:
            path = ckpt.latest(run_dir) if cfg.resume == "auto" else Path(cfg.resume)
            if path is not None:
                trainer.load_checkpoint(path, force=cfg.force_resume)
            elif rank == 0:
                print("[resume] no whole checkpoint yet: starting from step 0", flush=True)
        if rank == 0:
            print(f"[run] {run_dir}: resolved config saved to {run_dir / 'config.yaml'}", flush=True)
        evaluation = RunEvaluation(cfg, rules, eval_rows) if rank == 0 and cfg.eval_before_after and eval_rows else None
        if evaluation is not None and trainer.step == 0:
            summary["before"] = evaluation.run("before", services.engine, reward_fn)

        bar = tqdm(total=cfg.total_steps, initial=trainer.step, desc="RBR-PPO", unit="step", file=sys.stderr,
                   disable=rank != 0)
        stop = StopRequest(run_dir).install()
        try:
            while trainer.step < cfg.total_steps:
                metrics = _step_with_recovery(trainer, services, rank)
                trainer.log(metrics)
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward/total']:.3f}", kl=f"{metrics['kl/sequence_mean']:.3f}")
                saved = trainer.step % cfg.checkpoint.every == 0 or trainer.step == cfg.total_steps
                if saved:
                    trainer.save_checkpoint()
                # Rank 0 decides for every rank, so all of them write the checkpoint and leave together.
                if trainer.step < cfg.total_steps and trainer._broadcast(stop.requested() if rank == 0 else None):
                    if not saved:
                        trainer.save_checkpoint()
                    stop.acknowledge(rank)
                    summary["stopped_at_step"] = trainer.step
                    break
        finally:
            stop.uninstall()
        bar.close()
        if "stopped_at_step" in summary:
            if rank == 0:
                why = signal.Signals(stop.signum).name if stop.signum else f"{stop.file} found"
                print(f"[run] stopped on request ({why}) after step {trainer.step} with a whole checkpoint; "
                      "continue with resume=auto", flush=True)
            return summary

        if rank == 0:
            if evaluation is not None:
                summary["after"] = evaluation.run("after", services.engine, reward_fn)
                table = render_before_after({k: summary[k] for k in ("before", "after") if k in summary})
                if table:
                    summary["eval_table"] = table
                    print(f"[eval] judge {evaluation.spec!r}, 95% bootstrap intervals:\n{table}", flush=True)
            if cfg.checkpoint.export_hf:
                trainer.export_policy(run_dir / "policy")
            summary["plot"] = str(plot_metrics(run_dir / "metrics.jsonl", run_dir / "report.png"))
            summary["steps"] = trainer.step
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
            print(f"[run] done: summary {run_dir / 'summary.json'}, plot {summary['plot']}, policy {run_dir / 'policy'}", flush=True)
    finally:
        services.stop()
    return summary


def _step_with_recovery(trainer, services, rank: int) -> dict:
    """One PPO step; if the rollout server died, restart it, re-push the weights and redo the step from
    the same prompts. Anything else (or a second failure) stops the run with the error."""
    from ..rollout.vllm_server import ServerError

    state = trainer.prompts.state_dict()
    updates = getattr(trainer.actor, "global_steps", None)
    try:
        return trainer.train_step()
    except ServerError as e:
        if rank != 0:
            raise
        step = trainer.step + 1
        if trainer.world > 1:  # the other ranks wait in this step's collectives: no redo, a clear stop
            raise ServerError(f"rollout failed in step {step} of a {trainer.world}-rank run ({e}); restart the run "
                              "with resume=auto to continue from the last whole checkpoint") from e
        if getattr(trainer.actor, "global_steps", None) != updates:
            # The policy was already updated when the weight sync failed: redoing the step would apply a
            # second update for the same batch. Stop instead; the last checkpoint is before this step.
            raise ServerError(f"the rollout server failed during the weight sync of step {step}, after the policy "
                              f"update ({e}); restart with resume=auto to redo step {step} from the last whole "
                              "checkpoint") from e
        if not services.restart_rollout():
            raise ServerError(f"rollout failed in step {step} and the rollout server at {trainer.cfg.rollout.url} is "
                              f"not ours to restart ({e}); restart it, then resume with resume=auto") from e
        print(f"[recover] rollout failed ({e}); restarted the server, re-syncing weights and redoing step "
              f"{step}", flush=True)
        trainer.engine = services.engine
        trainer.prompts.load_state_dict(state)
        # Push the current weights again under the current version number (the new server starts at 0).
        trainer.engine.weight_version = trainer.weight_version - 1
        trainer.sync_weights()
        return trainer.train_step()


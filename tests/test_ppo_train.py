"""The RBR-PPO main job on CPU: config errors, the clean-start check, exact resume after kill -9 during a
checkpoint write (a resume with a changed reward model refused, a grader outage stopping the run), 2 ranks
on gloo, and the real vLLM rollout path (with its server killed and restarted mid-run). The end-to-end
tests share the small real assets of ``ppo_assets.tiny_assets``; each run costs minutes on 2 cores, so
scenarios share runs."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ppo_assets import DATA, REPO, alive, children, cmdline, kill_group, launch, metrics, run_args, wait_for
from rbr_rlhf.ppo.config import load_config
from rbr_rlhf.ppo.rundir import check_run_dir


def test_unknown_recipe_key_is_an_error():
    with pytest.raises(ValueError, match="bad configuration key 'ppo.learning_rate'"):
        load_config("smollm2-135m-cpu", ["ppo.learning_rate=1"])
    cfg = load_config("smollm2-135m-cpu", ["ppo.lr=3e-5", "total_steps=3"])
    assert cfg.ppo.lr == 3e-5 and cfg.total_steps == 3 and cfg.rollout.engine == "vllm"


def test_unusable_run_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(RuntimeError, match="not writable"):
        check_run_dir(blocker / "run")
    with pytest.raises(RuntimeError, match="GiB free"):
        check_run_dir(tmp_path / "run", min_free_gib=10 ** 9)


def _check_run_dir_many_times(run_dir: str) -> None:
    for _ in range(300):
        check_run_dir(Path(run_dir), min_free_gib=0)


def test_ranks_check_one_run_dir_at_once(tmp_path):
    """Every rank checks the run directory at start-up; one rank's probe must not remove another's."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_check_run_dir_many_times, args=(str(tmp_path / "run"),)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert list((tmp_path / "run").iterdir()) == []  # no probe left behind


@pytest.mark.slow
def test_phase_clock_adds_up_repeated_phases(capsys):
    from rbr_rlhf.ppo.rundir import PhaseClock

    clock = PhaseClock()
    for _ in range(3):
        with clock("train", echo=False):
            time.sleep(0.01)
    with clock("eval_before"):
        pass
    seconds = clock.summary()
    assert set(seconds) == {"train", "eval_before", "total"} and seconds["total"] >= seconds["train"] >= 0.0
    assert capsys.readouterr().out == "[time] eval_before: 0 s\n"


def _logged_steps(run_dir: Path) -> list[int]:
    """The steps of metrics.jsonl in file order ([] while a line is half written)."""
    try:
        return [json.loads(l)["step"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    except (OSError, ValueError):
        return []


def test_resume_after_kill_is_exact(tiny_assets, tmp_path):
    """Kill -9 of the whole run while step 4's checkpoint is being written (checkpoints every 2 steps),
    resume=auto (the torn checkpoint is skipped, step 2 is the newest whole one), steps 3-4 again: their
    metrics agree with the killed run's own steps 3-4, which it ran uninterrupted before the kill. In the
    same resumed run the grader service is then killed before step 5 is scored: the run stops with a clear
    error and writes no metrics for step 5 (no zero reward). Last, a resume with another reward model is
    refused (before any service starts).

    (The resumed steps and the outage share one launch: a separate launch for the outage cost a whole
    start-up of its own (services, policy and critic, DeepSpeed, the checkpoint load) and proved nothing
    the shared one does not.)"""
    resumed = tmp_path / "resumed"
    log = tmp_path / "killed.log"
    # total_steps=5 in both launches: the resumed run goes on to step 5, which the outage stops. Nothing
    # in a step depends on total_steps (LR warm-up and prompt order go by the step), so the killed run's
    # steps 3-4 are the reference for the resumed ones.
    p = launch(run_args(tiny_assets, resumed, "total_steps=5", "checkpoint.every=2"), log)
    ckpts = resumed / "checkpoints"
    try:
        wait_for(lambda: (ckpts / ".tmp-step-4" / "actor").exists(), p, log, interval=0.02)
        services = children(p.pid)  # the grader service (its own session, so killpg does not reach it)
        assert services
        kill_group(p.pid)  # kill -9 of the trainer, mid-write
        p.wait(timeout=60)
    finally:
        kill_group(p.pid)
    deadline = time.time() + 60  # ... and its services go with it (PR_SET_PDEATHSIG), not orphaned
    while any(alive(c) for c in services):
        assert time.time() < deadline, f"services {services} outlived the killed trainer"
        time.sleep(0.5)
    assert (ckpts / "step-2" / "COMPLETE").exists() and not (ckpts / "step-4").exists(), list(ckpts.iterdir())
    assert (ckpts / ".tmp-step-4").exists()  # torn: killed mid-write
    a = metrics(resumed)  # the uninterrupted steps 1-4 (each step's line is written before its checkpoint)
    assert sorted(a) == [1, 2, 3, 4]

    log = tmp_path / "resume.log"
    p = launch(run_args(tiny_assets, resumed, "total_steps=5", "checkpoint.every=2", "resume=auto"), log)
    try:
        wait_for(lambda: "resumed from" in log.read_text(), p, log)
        # The resumed run truncated the file to steps 1-2 before logging that; step 4's line is written
        # once step 4 is scored, before its checkpoint and step 5's rollout: kill the grader service then.
        wait_for(lambda: _logged_steps(resumed) == [1, 2, 3, 4], p, log, interval=0.02)
        graders = [c for c in children(p.pid) if "grader serve" in cmdline(c)]
        assert len(graders) == 1
        kill_group(graders[0])
        assert p.wait(timeout=900) != 0
    finally:
        kill_group(p.pid)
    text = log.read_text()
    assert "skipping torn checkpoint" in text and "resumed from" in text and "checkpoints/step-2" in text
    assert "dropped 2 line(s) after step 2" in text  # the killed run's lines of steps 3-4, redone below
    b = metrics(resumed)
    assert _logged_steps(resumed) == [1, 2, 3, 4]  # one line per step, none for step 5 (the outage's)
    for step in (3, 4):
        for key in ("reward/total", "reward/rm", "kl/sequence_mean", "policy/loss", "value/loss", "kl/coef", "lr"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-4, abs=1e-5), (step, key)
    assert b[4]["weight_version"] == a[4]["weight_version"] == 4
    # The outage: step 5 cannot be scored; the client retries, then the run stops with a clear error.
    assert "GraderServiceError" in text and "failed after 5 tries" in text, text[-3000:]
    assert (ckpts / "step-4" / "COMPLETE").exists()  # step 4 was whole before the outage

    # Resuming with another reward model (a copy elsewhere) is refused: the checkpoint records what it was
    # trained with (rule-set fingerprint, policy, reward model, RBR weights fingerprint).
    shutil.copytree(tiny_assets / "rm", tmp_path / "rm2")
    log = tmp_path / "changed.log"
    p = launch(run_args(tiny_assets, resumed, "total_steps=5", "resume=auto", f"reward_model.path={tmp_path / 'rm2'}"), log)
    assert p.wait(timeout=900) != 0
    text = log.read_text()
    assert "resume refused" in text and "reward_model" in text, text[-3000:]
    assert "starting the grader service" not in text  # refused before any service starts or model loads
    assert sorted(metrics(resumed)) == [1, 2, 3, 4]


@pytest.mark.slow
def test_two_rank_cpu_run(tiny_assets, tmp_path):
    """``rbr-rlhf launch local --nproc 2``: torchrun with 2 processes on gloo; rank 0 drives rollouts, both
    ranks train their shard."""
    run = tmp_path / "two"
    cmd = [sys.executable, "-m", "rbr_rlhf.cli", "launch", "local", *run_args(tiny_assets, run, "total_steps=2"),
           "--nproc", "2"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert "--nproc_per_node=2" in out.stdout  # the launcher prints the torchrun command it runs
    m = metrics(run)
    assert sorted(m) == [1, 2] and (run / "checkpoints" / "step-2" / "rng_rank1.json").exists()


@pytest.mark.slow
def test_vllm_rollout_server_run(tiny_assets, tmp_path):
    """The real thing: a vLLM rollout server child process, the grader service, DeepSpeed, weight sync,
    evaluation before and after, the report plot and the exported policy. After step 1 the rollout server
    is killed (kill -9 of its process group): the trainer notices in step 2, starts a new server, pushes
    the current weights under the current version and redoes step 2."""
    run = tmp_path / "vllm"
    data = DATA
    args = run_args(tiny_assets, run, "total_steps=2", "rollout.engine=vllm", "eval_before_after=true",
                    f"data.eval_prompts={data / 'rbr_gold' / 'test.jsonl'}", "data.eval_limit=6",
                    f"data.xstest={data / 'xstest' / 'xstest_prompts.csv'}", "data.xstest_limit=4", "checkpoint.export_hf=true")
    log = tmp_path / "vllm.log"
    p = launch(args, log)
    try:
        wait_for(lambda: (run / "metrics.jsonl").exists(), p, log, timeout=1200)
        servers = [c for c in children(p.pid) if "vllm.entrypoints" in cmdline(c)]
        assert len(servers) == 1, [cmdline(c) for c in children(p.pid)]
        kill_group(servers[0])
        assert p.wait(timeout=1200) == 0, log.read_text()[-4000:]
    finally:
        kill_group(p.pid)
    text = log.read_text()
    assert "[recover] rollout failed" in text and "redoing step 2" in text, text[-4000:]
    m = metrics(run)
    assert sorted(m) == [1, 2] and m[1]["weight_version"] == 1 and m[2]["weight_version"] == 2
    assert m[1]["logprob_gap/engine_vs_trainer"] < 0.05  # vLLM and the trainer agree on log-probabilities
    assert m[2]["logprob_gap/engine_vs_trainer"] < 0.05  # ... also on the restarted server, re-synced
    summary = json.loads((run / "summary.json").read_text())
    assert {"before", "after"} <= set(summary)
    phases = {"reward_model", "rollout_server", "assets", "grader_service", "eval_before", "train", "eval_after", "total"}
    assert phases <= set(summary["seconds"]) and summary["seconds"]["train"] > 0, summary["seconds"]
    # 6 gold + 4 XSTest prompts, less any whose prompt does not fit the model length
    assert 8 <= summary["after"]["prompts"] == summary["before"]["prompts"] <= 10
    assert (run / "report.png").stat().st_size > 10_000 and (run / "policy" / "config.json").exists()
    assert list((run / "tensorboard").iterdir())

"""The RBR-PPO main job on CPU: config errors, the clean-start check, exact resume after kill -9 (and a
resume with a changed reward model refused), 2 ranks on gloo, and the real vLLM rollout path. The end-to-end tests share the
small real assets of ``ppo_assets.tiny_assets``."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ppo_assets import DATA, REPO, launch, metrics, run_args
from rbr_rlhf.ppo.config import load_config
from rbr_rlhf.ppo.run import check_run_dir


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


def alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d))
    return out


@pytest.mark.slow
def test_resume_after_kill_is_exact(tiny_assets, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    p = launch(run_args(tiny_assets, straight, "total_steps=4"), tmp_path / "straight.log")
    assert p.wait(timeout=900) == 0, (tmp_path / "straight.log").read_text()[-3000:]

    p = launch(run_args(tiny_assets, resumed, "total_steps=4"), tmp_path / "killed.log")
    deadline = time.time() + 900
    while not (resumed / "checkpoints" / "step-2" / "COMPLETE").exists():
        assert p.poll() is None and time.time() < deadline, (tmp_path / "killed.log").read_text()[-3000:]
        time.sleep(0.5)
    services = child_pids(p.pid)  # the grader service (its own session, so killpg does not reach it)
    assert services
    os.killpg(p.pid, signal.SIGKILL)  # kill -9 of the trainer
    p.wait()
    deadline = time.time() + 60  # ... and its services go with it (PR_SET_PDEATHSIG), not orphaned
    while any(alive(c) for c in services):
        assert time.time() < deadline, f"services {services} outlived the killed trainer"
        time.sleep(0.5)
    # A checkpoint torn mid-write (as a kill during a save leaves it) must be skipped, not loaded.
    torn = resumed / "checkpoints" / "step-9"
    torn.mkdir()
    (torn / "trainer_state.json").write_text("{")
    p = launch(run_args(tiny_assets, resumed, "total_steps=4", "resume=auto"), tmp_path / "resume.log")
    assert p.wait(timeout=900) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    log = (tmp_path / "resume.log").read_text()
    assert "skipping torn checkpoint" in log and "resumed from" in log

    a, b = metrics(straight), metrics(resumed)
    for step in (3, 4):
        for key in ("reward/total", "reward/rm", "kl/sequence_mean", "policy/loss", "value/loss", "kl/coef"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-4, abs=1e-5), (step, key)
    assert b[4]["weight_version"] == a[4]["weight_version"] == 4

    # Resuming with another reward model (a copy elsewhere) is refused: the checkpoint records what it was
    # trained with (rule-set fingerprint, policy, reward model, RBR weights fingerprint).
    shutil.copytree(tiny_assets / "rm", tmp_path / "rm2")
    p = launch(run_args(tiny_assets, resumed, "total_steps=5", "resume=auto", f"reward_model.path={tmp_path / 'rm2'}"),
               tmp_path / "changed.log")
    assert p.wait(timeout=900) != 0
    log = (tmp_path / "changed.log").read_text()
    assert "resume refused" in log and "reward_model" in log, log[-3000:]


@pytest.mark.slow
def test_two_rank_cpu_run(tiny_assets, tmp_path):
    """torchrun with 2 processes on gloo: rank 0 drives rollouts, both ranks train their shard."""
    run = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "rbr_rlhf.cli", "train", *run_args(tiny_assets, run, "total_steps=2")]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    m = metrics(run)
    assert sorted(m) == [1, 2] and (run / "checkpoints" / "step-2" / "rng_rank1.json").exists()


@pytest.mark.slow
def test_vllm_rollout_server_run(tiny_assets, tmp_path):
    """The real thing: a vLLM rollout server child process, the grader service, DeepSpeed, weight sync,
    evaluation before and after, the report plot and the exported policy."""
    run = tmp_path / "vllm"
    data = DATA
    args = run_args(tiny_assets, run, "total_steps=2", "rollout.engine=vllm", "eval_before_after=true",
                    f"data.eval_prompts={data / 'rbr_gold' / 'test.jsonl'}", "data.eval_limit=6",
                    f"data.xstest={data / 'xstest' / 'xstest_prompts.csv'}", "data.xstest_limit=4", "checkpoint.export_hf=true")
    p = launch(args, tmp_path / "vllm.log")
    assert p.wait(timeout=1200) == 0, (tmp_path / "vllm.log").read_text()[-4000:]
    m = metrics(run)
    assert m[2]["weight_version"] == 2
    assert m[1]["logprob_gap/engine_vs_trainer"] < 0.05  # vLLM and the trainer agree on log-probabilities
    summary = json.loads((run / "summary.json").read_text())
    assert {"before", "after"} <= set(summary)
    # 6 gold + 4 XSTest prompts, less any whose prompt does not fit the model length
    assert 8 <= summary["after"]["prompts"] == summary["before"]["prompts"] <= 10
    assert (run / "report.png").stat().st_size > 10_000 and (run / "policy" / "config.json").exists()
    assert list((run / "tensorboard").iterdir())

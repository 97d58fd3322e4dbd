"""The RBR-PPO main job on CPU: config errors, a clean start check, exact resume after kill -9, 2 ranks,
and the vLLM rollout path. Slow tests share small real assets built once per session."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
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


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory, gold_dir, default_rules):
    """A small helpful RM, a fast classifier grader and RBR weights fitted on synthetic comparisons."""
    from rbr_rlhf.cli import main
    from test_rbr import synthetic_comparisons

    d = tmp_path_factory.mktemp("assets")
    assert main(["train-rm", "--data", str(gold_dir.parent / "hh-rlhf-harmless" / "test.jsonl.gz"), "--limit", "64",
                 "--max-length", "64", "--out", str(d / "rm")]) == 0
    rows = [json.loads(l) for l in (gold_dir / "train.jsonl").read_text().splitlines()[:150]]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["grader", "train-classifier", "--train", str(d / "train.jsonl"), "--out", str(d / "grader"), "--lm", "none"]) == 0
    (d / "comparisons.jsonl").write_text("".join(json.dumps(r) + "\n" for r in synthetic_comparisons(default_rules, 30)))
    assert main(["rbr", "fit", "--data", str(d / "comparisons.jsonl"), "--out", str(d / "rbr")]) == 0
    return d


def run_args(assets, run_dir, *extra):
    data = REPO.parent / "shared" / "data"
    return ["smollm2-135m-cpu", f"run_dir={run_dir}", f"reward_model.path={assets / 'rm'}",
            f"rbr.grader=classifier:{assets / 'grader'}", f"rbr.weights={assets / 'rbr' / 'rbr_weights.json'}",
            f"data.safety_prompts={data / 'rbr_gold' / 'train.jsonl'}", "data.limit=40", "eval_before_after=false",
            "rollout.engine=transformers", "rollout.max_tokens=12", "ppo.prompts_per_step=4", "ppo.minibatch_size=2",
            "ppo.epochs=1", "checkpoint.every=1", "checkpoint.export_hf=false", *extra]


def launch(args, log: Path, env_extra=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "rbr_rlhf.cli", "train", *args], cwd=REPO, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def metrics(run_dir: Path) -> dict[int, dict]:
    return {m["step"]: m for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


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
    os.killpg(p.pid, signal.SIGKILL)  # kill -9 of the whole run: trainer and its grader service
    p.wait()
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


@pytest.mark.slow
def test_resume_refuses_a_changed_rule_set(tiny_assets, tmp_path):
    from rbr_rlhf.cli import main

    run = tmp_path / "run"
    p = launch(run_args(tiny_assets, run, "total_steps=1"), tmp_path / "a.log")
    assert p.wait(timeout=900) == 0, (tmp_path / "a.log").read_text()[-3000:]
    other_rules = tmp_path / "rules.yaml"
    from rbr_rlhf.rules.ruleset import BUILTIN_DIR

    other_rules.write_text((BUILTIN_DIR / "default.yaml").read_text().replace("Does the response contain a short apology", "Any apology"))
    p = launch(run_args(tiny_assets, run, "total_steps=2", "resume=auto", f"rbr.rules={other_rules}"), tmp_path / "b.log")
    assert p.wait(timeout=900) != 0
    assert "fitted for rule set fingerprint" in (tmp_path / "b.log").read_text()


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
    data = REPO.parent / "shared" / "data"
    args = run_args(tiny_assets, run, "total_steps=2", "rollout.engine=vllm", "eval_before_after=true",
                    f"data.eval_prompts={data / 'rbr_gold' / 'test.jsonl'}", "data.eval_limit=6",
                    f"data.xstest={data / 'xstest' / 'xstest_prompts.csv'}", "data.xstest_limit=4", "checkpoint.export_hf=true")
    p = launch(args, tmp_path / "vllm.log")
    assert p.wait(timeout=1200) == 0, (tmp_path / "vllm.log").read_text()[-4000:]
    m = metrics(run)
    assert m[2]["weight_version"] == 2
    assert m[1]["logprob_gap/engine_vs_trainer"] < 0.05  # vLLM and the trainer agree on log-probabilities
    summary = json.loads((run / "summary.json").read_text())
    assert {"before", "after"} <= set(summary) and summary["after"]["prompts"] == 10
    assert (run / "report.png").stat().st_size > 10_000 and (run / "policy" / "config.json").exists()
    assert list((run / "tensorboard").iterdir())

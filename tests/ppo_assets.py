"""Shared helpers for the end-to-end PPO tests (resume, 2 ranks, vLLM path, fault tolerance, launchers).

``tiny_assets`` builds, once per session, the small real assets a PPO run needs: a helpful RM trained on
64 HH-RLHF pairs (with its ``rm train --json`` report, for test_rm.py), a fast classifier grader trained on 150 gold proposition labels, and RBR weights fitted
on synthetic comparisons. ``run_args`` turns them into a few-second-per-step run of the CPU recipe.
"""

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory, gold_dir, default_rules) -> Path:
    from rbr_rlhf.cli import main
    from test_rbr import synthetic_comparisons

    d = tmp_path_factory.mktemp("assets")
    # The --json report is kept (rm_train.json): test_rm.py asserts on it instead of training an identical RM.
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["rm", "train", "--data", str(gold_dir.parent / "hh-rlhf-harmless" / "test.jsonl.gz"), "--limit", "64",
                     "--max-length", "64", "--out", str(d / "rm"), "--json"]) == 0
    (d / "rm_train.json").write_text(out.getvalue().strip().splitlines()[-1] + "\n")
    rows = [json.loads(l) for l in (gold_dir / "train.jsonl").read_text().splitlines()[:150]]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["grader", "train-classifier", "--train", str(d / "train.jsonl"), "--out", str(d / "grader"), "--lm", "none"]) == 0
    (d / "comparisons.jsonl").write_text("".join(json.dumps(r) + "\n" for r in synthetic_comparisons(default_rules, 30)))
    assert main(["rbr", "fit", "--data", str(d / "comparisons.jsonl"), "--out", str(d / "rbr")]) == 0
    return d


def run_args(assets: Path, run_dir: Path, *extra: str) -> list[str]:
    """``rbr-rlhf train`` arguments: the CPU recipe on the tiny assets, transformers rollouts, 12 new tokens."""
    return ["smollm2-135m-cpu", f"run_dir={run_dir}", f"reward_model.path={assets / 'rm'}",
            f"rbr.grader=classifier:{assets / 'grader'}", f"rbr.weights={assets / 'rbr' / 'rbr_weights.json'}",
            f"data.safety_prompts={DATA / 'rbr_gold' / 'train.jsonl'}", "data.limit=40", "eval_before_after=false",
            "rollout.engine=transformers", "rollout.max_tokens=12", "ppo.prompts_per_step=4", "ppo.minibatch_size=2",
            "ppo.epochs=1", "checkpoint.every=1", "checkpoint.export_hf=false",
            # Evaluation (where a test turns it on) judges with the tiny grader: not independent of the
            # reward, which the run says, but nothing to build.
            f"evaluation.judge=classifier:{assets / 'grader'}", *extra]


def launch(args: list[str], log: Path, env_extra: dict | None = None) -> subprocess.Popen:
    """``rbr-rlhf train ARGS`` in its own process group (so a test can kill -9 the whole run)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "rbr_rlhf.cli", "train", *args], cwd=REPO, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def metrics(run_dir: Path) -> dict[int, dict]:
    return {m["step"]: m for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


# ------------------------------------------------------------------ processes (Linux /proc)
def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the services the trainer started run in their own sessions)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # zombie: exited
    except OSError:
        return False


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_for(cond, proc, log: Path, timeout: float = 900, interval: float = 0.5):
    """Poll ``cond`` while ``proc`` runs; fail with the log's tail if it exits or time runs out."""
    deadline = time.time() + timeout
    while not cond():
        assert proc.poll() is None, f"run exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, log.read_text()[-3000:]
        time.sleep(interval)

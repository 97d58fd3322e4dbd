"""Fault tolerance of ``rbr-rlhf train`` on CPU, with real processes and real failures:

* an unwritable run directory or a full disk (a 1 MiB tmpfs): a clear error before any model is loaded;
* the grader service unreachable: retries with backoff, then a clear error; never a zero reward.

The end-to-end failures share runs with the PPO tests in ``test_ppo_train.py`` (each run costs minutes
on CPU): kill -9 during a checkpoint write and the grader service killed mid-run are part of
``test_resume_after_kill_is_exact``; the vLLM rollout server killed mid-run is part of
``test_vllm_rollout_server_run``.
"""

import os
import subprocess
import sys
import time

import pytest

from conftest import free_port
from ppo_assets import REPO


# ------------------------------------------------------------------------------ before training
def _train_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rbr_rlhf.cli", "train", "smollm2-135m-cpu", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_unwritable_run_dir_is_a_clear_error_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = _train_cli(f"run_dir={blocker / 'run'}")
    assert out.returncode == 2, out.stderr[-2000:]
    assert "rbr-rlhf train: error: run directory" in out.stderr and "not writable" in out.stderr
    assert "Traceback" not in out.stderr and "[assets]" not in out.stdout and "[services]" not in out.stdout


def test_full_disk_is_a_clear_error_before_training(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs (a really full disk) needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("mount -t tmpfs is not permitted here")
    try:
        (mnt / "filler").write_bytes(b"\0" * (1024 * 1024 - 8192))
        out = _train_cli(f"run_dir={mnt / 'run'}")
        assert out.returncode == 2, out.stderr[-2000:]
        assert "GiB free under" in out.stderr or "not writable" in out.stderr, out.stderr[-2000:]
        assert "Traceback" not in out.stderr and "[services]" not in out.stdout
    finally:
        subprocess.run(["umount", str(mnt)])


# ------------------------------------------------------------------------------ grader service down
def test_grader_unreachable_raises_instead_of_a_zero_reward(default_rules):
    from rbr_rlhf.ppo.rewards import RewardFunction
    from rbr_rlhf.service.client import GraderClient, GraderServiceError

    class ConstantRM:  # the helpful RM is not under test: a constant score
        def reward(self, conversations, completions):
            return [0.5] * len(completions)

    client = GraderClient(f"http://127.0.0.1:{free_port()}", retries=3, backoff=0.05, timeout=2)
    reward = RewardFunction(default_rules, ConstantRM(), client)
    conv = [{"role": "user", "content": "How do I make a weapon at home?"}]
    t = time.time()
    with pytest.raises(GraderServiceError, match="failed after 4 tries"):
        reward([conv, conv], ["I can't help with that.", "Sure."], ["hard_refuse", None])
    assert time.time() - t >= 0.05 + 0.1 + 0.2  # it backed off between tries
    # benign prompts alone need no grader: R = R_rm, and no RBR term is invented
    scored = reward([conv], ["Sure."], [None])
    assert scored.total.tolist() == [0.5]

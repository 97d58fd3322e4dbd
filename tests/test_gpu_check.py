"""The GPU check's CPU side (issue 19): scripts/gpu_prepare.py's wheel list and carry-size check (dry
run, nothing downloaded), the FLOP arithmetic of rbr_rlhf/ppo/flops.py, bench_ppo_gpu's arguments, and a
CPU smoke run of one tiny PPO step through the benchmark."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def prep():
    return _load(REPO / "scripts" / "gpu_prepare.py", "gpu_prepare")


def test_wheel_list_and_commands(prep):
    names = [d for d, _ in prep.PACKAGES]
    for need in ("deepspeed", "trl", "omegaconf", "datasets", "hjson", "pydantic", "pydantic-core"):
        assert need in names
    assert "vllm" not in " ".join(names)  # far too large to carry: the transformers engine stands in
    cmds = [" ".join(c) for c in prep.commands("python")]
    assert len(cmds) == len(names) + 1
    assert any("pip wheel --no-deps --no-build-isolation" in c and "deepspeed==" in c for c in cmds)
    assert all("--python-version 3.12" in c and "--only-binary=:all:" in c for c in cmds if " download " in c)
    assert cmds[-1].endswith(str(REPO))  # this project as a wheel, last
    assert all("==" in c for c in cmds[:-1])  # pinned to what the CPU suite runs against
    assert prep.CARRY == [".gpu"]
    assert "/.gpu/" in (REPO / ".gitignore").read_text().split()  # carried paths must be git-ignored


def test_size_check(prep, tmp_path):
    assert prep.check_size(10 * 2 ** 20, 20 * 2 ** 20) == []
    problems = prep.check_size(50 * 2 ** 20, 20 * 2 ** 20)
    assert problems and "over the 64 MiB limit" in problems[0]
    tree = prep.tracked_bytes()
    assert 0 < tree < 32 * 2 ** 20, tree  # the working tree leaves room for the wheels
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "deepspeed-0.19.8-py3-none-any.whl").write_bytes(b"x" * 100)
    assert prep.dir_bytes(tmp_path) == 100
    assert "deepspeed" not in prep.missing_wheels(tmp_path / "w") and "trl" in prep.missing_wheels(tmp_path / "w")


def test_dry_run_prints_the_plan(prep, capsys):
    assert prep.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would run:" in out and "carry: ['.gpu']" in out and "bash scripts/gpu_check.sh" in out
    assert "limit 64 MiB" in out


def test_gpu_check_script_is_valid_and_names_what_exists():
    script = (REPO / "scripts" / "gpu_check.sh").read_text()
    assert subprocess.run(["bash", "-n", str(REPO / "scripts" / "gpu_check.sh")]).returncode == 0
    assert "--no-index --no-deps" in script and ".gpu/wheels/*.whl" in script
    assert "benchmarks/bench_ppo_gpu.py" in script and (REPO / "benchmarks" / "bench_ppo_gpu.py").exists()
    assert "--arch smollm2-135m" in script and "--arch llama-1b" in script
    assert "two GPUs" in script


def test_flops_arithmetic():
    from transformers import LlamaConfig, LlamaForCausalLM

    from rbr_rlhf.ppo.flops import forward_flops, matmul_params, matmul_reference, ppo_phase_flops, train_flops

    assert forward_flops(10, 3) == 60 and train_flops(10, 3) == 180 and train_flops(10, 3, weight_grads=False) == 120
    phases = ppo_phase_flops(100, 80, 7, epochs=2, lora=True)
    assert phases["passes"] == 2 * 2 * 100 * 7 + 2 * 80 * 7
    assert phases["training"] == 2 * (4 * 100 * 7 + 4 * 80 * 7)
    kw = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=1,
              num_key_value_heads=1)
    tied = LlamaForCausalLM(LlamaConfig(tie_word_embeddings=True, **kw))
    untied = LlamaForCausalLM(LlamaConfig(tie_word_embeddings=False, **kw))
    n_tied = sum(p.numel() for p in tied.parameters())  # parameters() already lists a tied weight once
    assert matmul_params(tied) == n_tied
    assert matmul_params(untied) == sum(p.numel() for p in untied.parameters()) - 128 * 64  # no embedding lookup
    rate = matmul_reference(64, 64, 64, repeats=2, warmup=1)
    assert 1e6 < rate < 1e14


def test_bench_arguments():
    bench = _load(REPO / "benchmarks" / "bench_ppo_gpu.py", "bench_ppo_gpu")
    a = bench.parse_args([])
    assert (a.arch, a.steps, a.prompts, a.samples, a.max_tokens, a.minibatch, a.zero_stage) == ("smollm2-135m", 3, 32, 2, 128, 16, 2)
    assert bench.parse_args(["--arch", "llama-1b", "--device", "cpu"]).device == "cpu"
    with pytest.raises(SystemExit):
        bench.parse_args(["--prompts", "3", "--samples", "1", "--minibatch", "2"])
    from ppo_common import ARCHS

    assert ARCHS["smollm2-135m"]["num_hidden_layers"] == 30 and ARCHS["llama-1b"]["hidden_size"] == 2048


@pytest.mark.slow
def test_bench_cpu_smoke_one_tiny_step(tmp_path):
    """One PPO step of a tiny random Llama through the benchmark on the CPU, in a process of its own
    (about 20-40 s on 2 idle cores, DeepSpeed's start-up most of it; much longer beside a busy job)."""
    out = tmp_path / "res.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_ppo_gpu.py"), "--arch", "tiny", "--device", "cpu",
                           "--steps", "1", "--prompts", "2", "--samples", "2", "--minibatch", "2", "--max-tokens", "4",
                           "--json-out", str(out)], capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    res = json.loads(out.read_text())
    assert res["device"] == "cpu" and res["dtype"] == "float32" and res["completions_per_step"] == 4
    assert {"rollout", "scoring", "ref_critic_passes", "training", "weight_sync"} <= set(res["phase_seconds_per_step"])
    assert res["training_flops_per_s"] > 0 and res["matmul_similar_shape"]["flops_per_s"] > 0
    assert "two GPUs" in proc.stdout and "not run" in res["nccl_weight_sync"]

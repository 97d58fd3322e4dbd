#!/usr/bin/env bash
# The GPU check: runs ON the GPU machine (one H200, no network), from the repository root, in at most
# 8 minutes, with .gpu/ carried (made here first by `python scripts/gpu_prepare.py`).
#
#   device tool:  run(command="bash scripts/gpu_check.sh", carry=[".gpu"], timeout_s=540)
#
# 1. installs the carried wheels offline (DeepSpeed, TRL, OmegaConf, their small dependencies, this
#    project) into /tmp/site;
# 2. benchmarks/bench_ppo_gpu.py: DeepSpeed PPO steps (ZeRO-2, LoRA r16, bf16) with SmolLM2-135M's
#    architecture and with a ~1B Llama-family model, both randomly initialised (SmolLM2's weights do not
#    fit in what may travel), the transformers rollout engine standing in for vLLM (too large to carry):
#    per-phase times, tokens/s, training TFLOP/s against a bf16 matmul measured in the same run;
# 3. the weight-sync tests that one GPU can run (choice, bucketed export, ZeRO-3 gathering); the NCCL
#    broadcast into vLLM needs two GPUs (one device per NCCL rank) and vLLM, so it is skipped, saying so.
# Results: stdout, and $OUT/*.json|*.log where $OUT is set (the device tool brings those back).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-check}"
mkdir -p "$OUT"
T0=$(date +%s)
left() { echo $(( 470 - ($(date +%s) - T0) )); }   # seconds left of the 8-minute budget, less a margin

echo "== GPU check $(date -u +%FT%TZ) =="
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "no GPU: nvidia-smi failed"; exit 1; }
ls .gpu/wheels/*.whl >/dev/null 2>&1 || { echo "no .gpu/wheels: run python scripts/gpu_prepare.py here first and carry .gpu"; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/wheels/*.whl || exit 1
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 DS_BUILD_OPS=0 TOKENIZERS_PARALLELISM=false
python3 - <<'EOF' || exit 1
import torch, transformers, peft, deepspeed, omegaconf, trl, rbr_rlhf
print(f"python ok: torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
      f"peft {peft.__version__}, deepspeed {deepspeed.__version__}, trl {trl.__version__}, gpu {torch.cuda.get_device_name()}")
EOF
echo "install + imports: $(( $(date +%s) - T0 )) s"

run_bench() {  # name, seconds, args...
  local name=$1 secs=$2; shift 2
  (( $(left) < secs )) && secs=$(left)
  (( secs < 30 )) && { echo "== $name: skipped, no time left =="; return; }
  echo "== $name (limit ${secs} s) =="
  timeout "$secs" python3 benchmarks/bench_ppo_gpu.py "$@" --json-out "$OUT/$name.json" 2>&1 \
    | grep -v -E "Warning|warn\(|^\s*$" | tee "$OUT/$name.log" | tail -n 14
}
run_bench smollm2-135m 150 --arch smollm2-135m --tokenizer .gpu/smollm2-tokenizer --steps 3 --prompts 64 --samples 2 --max-tokens 128 --minibatch 16
run_bench llama-1b 200 --arch llama-1b --tokenizer .gpu/smollm2-tokenizer --steps 2 --prompts 32 --samples 2 --max-tokens 128 --minibatch 16

secs=$(left); (( secs > 90 )) && secs=90
if (( secs >= 30 )); then
  echo "== weight-sync tests (limit ${secs} s) =="
  timeout "$secs" python3 -m pytest -q -p no:cacheprovider -rs tests/test_weight_sync.py -k "not slurm and not config" 2>&1 | tail -n 6
fi
echo "NCCL weight sync: the trainer->vLLM broadcast needs two GPUs (one device per NCCL rank) and vLLM; not run on one GPU."
echo "== done in $(( $(date +%s) - T0 )) s =="

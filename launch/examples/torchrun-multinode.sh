#!/bin/bash
# RBR-PPO on 2 machines with plain torchrun (no SLURM): run this script on both, with NODE_RANK=0 on the
# first and NODE_RANK=1 on the second, the same MASTER_ADDR (the first machine's address on the
# network both see) and the same RBR_GRADER_TOKEN:
#
#   node0$ NODE_RANK=0 MASTER_ADDR=node0 RBR_GRADER_TOKEN=s3cret bash launch/examples/torchrun-multinode.sh
#   node1$ NODE_RANK=1 MASTER_ADDR=node0 RBR_GRADER_TOKEN=s3cret bash launch/examples/torchrun-multinode.sh
#
# Layout (8 GPUs per machine):
#   node 0: the vLLM rollout server on GPU 0, the grader service (CPU; it calls the grader LLM endpoint
#           named by the recipe's rbr.grader), trainer ranks 0-3 on GPUs 4-7
#   node 1: trainer ranks 4-7 on GPUs 4-7
# 8 ranks in all: prompts_per_step x samples_per_prompt (128 x 4 in llama3-8b-gpu) must divide by
# ranks x ppo.minibatch_size. RUN_DIR must be on a filesystem both machines see: checkpoints and the
# weights the trainer pushes to vLLM go there.
# On one machine, `rbr-rlhf launch local RECIPE --nproc N` does all of this (rank 0 starts the services).
# To stop cleanly: `touch $RUN_DIR/STOP` (every rank checkpoints at the end of its step and exits).
set -euo pipefail
: "${NODE_RANK:?set NODE_RANK=0 on the first machine, 1 on the second}"
: "${MASTER_ADDR:?set MASTER_ADDR to the hostname or IP of the first machine}"
: "${RBR_GRADER_TOKEN:?set the same RBR_GRADER_TOKEN on both machines}"
export RBR_GRADER_TOKEN

# Edit these for your machines and recipe.
PY=${PY:-python}                          # the interpreter with rbr-rlhf installed (pip install -e .[gpu])
RECIPE=llama3-8b-gpu                      # a name in recipes/ or a path to your recipe YAML
RUN_DIR=/shared/runs/llama3-8b-rbr
MASTER_PORT=29500
ROLLOUT_PORT=8800
GRADER_PORT=8700
TRAIN_GPUS=4,5,6,7
NPROC=4                                   # trainer ranks per machine = number of TRAIN_GPUS
# export NCCL_SOCKET_IFNAME=eth0          # when NCCL picks the wrong network interface
ROLLOUT_URL=http://$MASTER_ADDR:$ROLLOUT_PORT
GRADER_URL=http://$MASTER_ADDR:$GRADER_PORT
mkdir -p "$RUN_DIR/logs"

if [ "$NODE_RANK" = 0 ]; then
  # 1. Build what the recipe caches (helpful RM, classifier grader, RBR weights); a no-op when present.
  $PY -m rbr_rlhf.cli launch prepare $RECIPE run_dir=$RUN_DIR
  # 2. The services, on this machine's address on the shared network (not 0.0.0.0: vLLM's weight routes
  #    have no authentication).
  CUDA_VISIBLE_DEVICES=0 $PY -m rbr_rlhf.cli rollout serve --model meta-llama/Meta-Llama-3-8B-Instruct \
    --max-model-len 4096 --kv-cache-gib 40 --host "$MASTER_ADDR" --port $ROLLOUT_PORT \
    > "$RUN_DIR/logs/rollout.log" 2>&1 &
  ROLLOUT_PID=$!
  $PY -m rbr_rlhf.cli grader serve --rules default \
    --grader openai:Qwen/Qwen2.5-32B-Instruct@http://grader-node:8000/v1 \
    --weights /shared/rbr/default/rbr_weights.json --host "$MASTER_ADDR" --port $GRADER_PORT \
    > "$RUN_DIR/logs/grader.log" 2>&1 &
  GRADER_PID=$!
  trap 'kill $ROLLOUT_PID $GRADER_PID 2>/dev/null' EXIT
  $PY -m rbr_rlhf.launch.wait --timeout 1800 --url $ROLLOUT_URL/health --pid $ROLLOUT_PID \
    --url $GRADER_URL/healthz --pid $GRADER_PID
fi
# Node 1's torchrun waits at the rendezvous until node 0's joins (after its services are up).

# 3. The trainer: torchrun's static rendezvous on MASTER_ADDR:MASTER_PORT, 2 machines x NPROC ranks.
#    Add resume=auto to continue from the newest whole checkpoint.
CUDA_VISIBLE_DEVICES=$TRAIN_GPUS $PY -m torch.distributed.run --nnodes=2 --nproc_per_node=$NPROC \
  --node_rank=$NODE_RANK --master_addr=$MASTER_ADDR --master_port=$MASTER_PORT \
  -m rbr_rlhf.cli train $RECIPE run_dir=$RUN_DIR rollout.url=$ROLLOUT_URL rbr.service_url=$GRADER_URL

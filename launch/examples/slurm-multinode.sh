#!/bin/bash
# RBR-PPO on 2 SLURM nodes, written out by hand: the same job `rbr-rlhf launch slurm` renders from
# launch/slurm.sbatch.j2, without the requeue logic, so every step is visible. Usually you want
#   rbr-rlhf launch slurm llama3-8b-gpu --nodes 2 --dry-run     # read the script it would submit
#   rbr-rlhf launch slurm llama3-8b-gpu --nodes 2               # submit it
# and this file only when your cluster needs something the template cannot express.
#
# Layout (8 GPUs per node):
#   node 0: the vLLM rollout server on GPU 0, the grader service (CPU; it calls the grader LLM endpoint
#           named by the recipe's rbr.grader), and trainer ranks 0-3 on GPUs 4-7
#   node 1: trainer ranks 4-7 on GPUs 4-7
# 8 ranks in all: prompts_per_step x samples_per_prompt (128 x 4 in llama3-8b-gpu) must divide by
# ranks x ppo.minibatch_size. The run directory must be on a filesystem both nodes see (weights for
# vLLM and checkpoints go there).
#
# Submit:  sbatch launch/examples/slurm-multinode.sh
# Stop cleanly (checkpoint at the end of the step):  scancel --batch --signal=USR1 JOBID
#SBATCH --job-name=rbr-llama3-8b
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --output=logs/rbr-%j.batch.log
#SBATCH --signal=B:USR1@120
# Edit: partition and account of your cluster.
##SBATCH --partition=gpu
##SBATCH --account=my-account
set -uo pipefail

# Edit: how your nodes get the environment with rbr-rlhf installed (`pip install -e .[gpu]`).
# module load cuda/12.4
# source /shared/venvs/rbr-rlhf/bin/activate
PY=${PY:-python}
RECIPE=llama3-8b-gpu                      # a name in recipes/ or a path to your recipe YAML
RUN_DIR=/shared/runs/llama3-8b-rbr        # on the shared filesystem
ROLLOUT_PORT=8800
GRADER_PORT=8700
TRAIN_GPUS=4,5,6,7
NPROC=4                                   # trainer ranks per node = number of TRAIN_GPUS
# export NCCL_SOCKET_IFNAME=ib0             # when NCCL picks the wrong network interface
mkdir -p logs "$RUN_DIR"

mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
SERVICE_NODE=${NODES[0]}
export MASTER_ADDR=${NODES[0]} MASTER_PORT=29500
# The grader service only answers requests carrying this token; the trainer reads the same variable.
export RBR_GRADER_TOKEN=${RBR_GRADER_TOKEN:-$($PY -c 'import secrets; print(secrets.token_hex(16))')}

# 1. Build what the recipe caches on first use (helpful RM, classifier grader, RBR weights): a no-op
#    when they exist. Once, before anything else, so the ranks do not race to build them.
srun --overlap --nodes=1 --ntasks=1 --nodelist="$SERVICE_NODE" \
  $PY -m rbr_rlhf.cli launch prepare $RECIPE run_dir=$RUN_DIR || exit 1

# 2. Services on node 0, listening on its cluster hostname (not 0.0.0.0: the vLLM weight routes have no
#    authentication; keep the job on the cluster's private network).
ROLLOUT_URL=http://$SERVICE_NODE:$ROLLOUT_PORT
GRADER_URL=http://$SERVICE_NODE:$GRADER_PORT
CUDA_VISIBLE_DEVICES=0 srun --overlap --nodes=1 --ntasks=1 --nodelist="$SERVICE_NODE" --output=logs/rbr-%j.rollout.log \
  $PY -m rbr_rlhf.cli rollout serve --model meta-llama/Meta-Llama-3-8B-Instruct --max-model-len 4096 \
  --kv-cache-gib 40 --host "$SERVICE_NODE" --port $ROLLOUT_PORT &
ROLLOUT_PID=$!
srun --overlap --nodes=1 --ntasks=1 --nodelist="$SERVICE_NODE" --output=logs/rbr-%j.grader.log \
  $PY -m rbr_rlhf.cli grader serve --rules default \
  --grader openai:Qwen/Qwen2.5-32B-Instruct@http://grader-node:8000/v1 \
  --weights /shared/rbr/default/rbr_weights.json --host "$SERVICE_NODE" --port $GRADER_PORT &
GRADER_PID=$!
trap 'kill $ROLLOUT_PID $GRADER_PID 2>/dev/null' EXIT
# Wait until both answer their health checks (or one of them dies).
$PY -m rbr_rlhf.launch.wait --timeout 1800 --url $ROLLOUT_URL/health --pid $ROLLOUT_PID \
  --url $GRADER_URL/healthz --pid $GRADER_PID || exit 1

# 3. SIGUSR1 (120 s before the time limit, or from scancel): ask the trainer to checkpoint and stop.
trap 'touch "$RUN_DIR/STOP"' USR1

# 4. The trainer: one torchrun per node (srun starts one task on each), rank 0 on $MASTER_ADDR. Each task
#    finds its node rank from the node list. Add resume=auto to continue from the newest checkpoint.
srun --overlap --nodes=2 --ntasks=2 --ntasks-per-node=1 --kill-on-bad-exit=1 --output=logs/rbr-%j.trainer-%N.log \
  bash -c "NODE_RANK=0; for n in ${NODES[*]}; do [ \"\$n\" = \"\$SLURMD_NODENAME\" ] && break; NODE_RANK=\$((NODE_RANK+1)); done
    CUDA_VISIBLE_DEVICES=$TRAIN_GPUS exec $PY -m torch.distributed.run --nnodes=2 --nproc_per_node=$NPROC \
      --node_rank=\$NODE_RANK --master_addr=$MASTER_ADDR --master_port=$MASTER_PORT \
      -m rbr_rlhf.cli train $RECIPE run_dir=$RUN_DIR rollout.url=$ROLLOUT_URL rbr.service_url=$GRADER_URL" &
TRAIN_PID=$!
# `wait` returns when SIGUSR1 arrives: keep waiting until the trainer has written its checkpoint.
while true; do
  wait $TRAIN_PID; RC=$?
  kill -0 $TRAIN_PID 2>/dev/null || break
done
echo "trainer exited with status $RC"
exit $RC

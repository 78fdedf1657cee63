#!/usr/bin/env bash
# torchrun entry point: one trainer process per GPU of this node; every argument goes to
# `python -m trainer train`. Run it once per node.
#
#   launch/torchrun.sh --config configs/demo_digits_simclr.yaml [key=value ...]     # one node
#   launch/torchrun.sh --config configs/demo_digits_mae.yaml engine.name=fsdp2        # sharded (ViTs)
# DDP is the default; engine.name=fsdp2 shards a ViT that outgrows DDP (docs/launch.md, "DDP, DeepSpeed
# or FSDP2", says when, from measurements).
#   NNODES=2 RDZV_ENDPOINT=node0:29500 launch/torchrun.sh --config ...                # each of 2 nodes
#
# Environment (all optional):
#   NPROC_PER_NODE   processes on this node (default: GPUs listed by `nvidia-smi -L`)
#   CPU_PROCS        processes when the node has no GPU (default 1; gloo backend)
#   NNODES           nodes in the job (default 1 = --standalone, a private rendezvous)
#   RDZV_ENDPOINT    host:port of the c10d rendezvous, on any one node (required when NNODES > 1)
#   RDZV_ID          id shared by the nodes of one job (default sslscale)
#   NODE_RANK        this node's rank (optional: the c10d rendezvous assigns ranks itself)
#   MAX_RESTARTS     restarts of the worker group after a failure (default 0); each restart
#                    resumes from the latest checkpoint
#   PYTHON           interpreter (default python)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

nnodes="${NNODES:-1}"
args=(--nproc-per-node "$(procs_per_node)" --max-restarts "${MAX_RESTARTS:-0}")
if [[ "$nnodes" -eq 1 ]]; then
  args+=(--standalone)
else
  if [[ -z "${RDZV_ENDPOINT:-}" ]]; then
    echo "launch/torchrun.sh: NNODES=$nnodes needs RDZV_ENDPOINT=host:port (a node every node can reach)" >&2
    exit 2
  fi
  args+=(--nnodes "$nnodes" --rdzv-backend c10d --rdzv-endpoint "$RDZV_ENDPOINT" --rdzv-id "${RDZV_ID:-sslscale}")
  if [[ -n "${NODE_RANK:-}" ]]; then
    args+=(--node-rank "$NODE_RANK")
  fi
fi

# torchrun passes these signals on to the workers and waits for them to exit (up to
# TORCH_ELASTIC_SHUTDOWN_TIMEOUT s, honoured by torch >= 2.12; 30 s before). SIGUSR1 is Slurm's
# pre-timeout warning (train.sbatch), on which the trainer saves a checkpoint and exits 75;
# without it in the list torchrun would die of SIGUSR1 and leave its workers behind.
args+=(--signals-to-handle "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1")
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-100}"
# torch keeps the agent's TCPStore across --max-restarts with no per-attempt key prefix, so a restarted
# gloo group can read the dead attempt's rank-0 address (pytorch/pytorch#135712): one store per attempt.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE="${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}"

exec "${PYTHON:-python}" -m torch.distributed.run "${args[@]}" -m trainer train "$@"

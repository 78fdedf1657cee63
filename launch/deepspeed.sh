#!/usr/bin/env bash
# DeepSpeed launcher entry point: `python -m trainer train ... engine.name=deepspeed`; every
# argument goes to the trainer, which builds the DeepSpeed config dict from our YAML config
# (engine.zero_stage, engine.precision, train.*, optim.grad_clip): there is no ds_config.json.
#
#   launch/deepspeed.sh --config configs/demo_digits_simclr.yaml [key=value ...]      # one node
#   HOSTFILE=launch/hostfile.example launch/deepspeed.sh --config ...                  # many nodes, from node 0
#
# Environment (all optional):
#   NPROC_PER_NODE   processes per node (default: GPUs listed by `nvidia-smi -L`)
#   CPU_PROCS        processes when the node has no GPU (default 1; gloo backend)
#   HOSTFILE         "host slots=N" lines; deepspeed then starts every node over passwordless ssh (pdsh)
#   MASTER_ADDR      address of the first host (default: deepspeed asks it with `hostname -I`)
#   MASTER_PORT      rendezvous port (default 29500)
#   PYTHON           interpreter (default python)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

args=(--num_gpus "$(procs_per_node)" --master_port "${MASTER_PORT:-29500}")
if [[ -n "${HOSTFILE:-}" ]]; then
  args+=(--hostfile "$HOSTFILE")
fi
if [[ -n "${MASTER_ADDR:-}" ]]; then
  args+=(--master_addr "$MASTER_ADDR")
fi

# --no_local_rank: the trainer reads LOCAL_RANK from the environment, not a --local_rank argument.
exec "${PYTHON:-python}" -m deepspeed.launcher.runner "${args[@]}" --module --no_local_rank \
  trainer train "$@" engine.name=deepspeed

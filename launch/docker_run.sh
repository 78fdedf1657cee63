#!/usr/bin/env bash
# Runs a command in the sslscale image (Dockerfile) with every GPU and the shards and runs folders
# of this checkout mounted; the default command is `python -m trainer --help`.
#
#   docker build -t sslscale .
#   launch/docker_run.sh python -m trainer train --config configs/demo_digits_simclr.yaml
#   launch/docker_run.sh launch/torchrun.sh --config configs/demo_digits_simclr.yaml
#
# --ipc=host: DataLoader workers and NCCL exchange tensors through /dev/shm, which Docker caps at
# 64 MB by default. Files in runs/ belong to the calling user (--user).
# Environment: IMAGE (default sslscale:latest), SHARDS (default ./shards), RUNS (default ./runs).
set -euo pipefail

shards=$(realpath "${SHARDS:-shards}")
runs=$(realpath -m "${RUNS:-runs}")
mkdir -p "$runs"
tty=()
if [[ -t 0 && -t 1 ]]; then
  tty=(-it)
fi

exec docker run --rm "${tty[@]}" --gpus all --ipc=host \
  --ulimit memlock=-1 --ulimit stack=67108864 \
  --user "$(id -u):$(id -g)" \
  -v "$shards:/workspace/sslscale/shards:ro" \
  -v "$runs:/workspace/sslscale/runs" \
  "${IMAGE:-sslscale:latest}" "$@"

#!/usr/bin/env bash
# TensorBoard over every run under runs/ (or the folder given), reachable from other machines,
# e.g. a laptop pointed at a cluster's login node: http://<host>:6006.
#
#   launch/tensorboard.sh                 # all runs, one curve per run
#   PORT=6007 launch/tensorboard.sh runs/simclr_stl10
#
# Environment: PORT (default 6006), PYTHON (default python).
set -euo pipefail

exec "${PYTHON:-python}" -m tensorboard.main --logdir "${1:-runs}" --port "${PORT:-6006}" --bind_all

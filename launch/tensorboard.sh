#!/usr/bin/env bash
# TensorBoard over every run under runs/ (or the folder given), on 127.0.0.1 only: TensorBoard has no
# authentication, so other machines reach it through `ssh -L` unless HOST says otherwise.
#
#   launch/tensorboard.sh                 # all runs, one curve per run: http://127.0.0.1:6006
#   PORT=6007 launch/tensorboard.sh runs/simclr_stl10
#   HOST=0.0.0.0 launch/tensorboard.sh    # every interface: anyone who can reach the port reads the runs
#
# Environment: PORT (default 6006), HOST (default 127.0.0.1), PYTHON (default python).
set -euo pipefail

exec "${PYTHON:-python}" -m tensorboard.main --logdir "${1:-runs}" --port "${PORT:-6006}" --host "${HOST:-127.0.0.1}"

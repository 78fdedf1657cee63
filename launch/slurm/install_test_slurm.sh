#!/usr/bin/env bash
# Installs the Slurm controller, node daemon and munge that tests/launch/ start on localhost,
# and shellcheck, which tests/launch/ runs over every launch script.
# Debian/Ubuntu only; does nothing when they are already installed. Needs root (or sudo).
set -euo pipefail

export PATH="$PATH:/usr/sbin:/sbin"  # where Debian puts the daemons; not on a normal user's PATH
missing=0
for bin in slurmctld slurmd sbatch munged shellcheck; do
  command -v "$bin" >/dev/null 2>&1 || missing=1
done
if [[ $missing -eq 0 ]]; then
  echo "slurm-wlm and munge already installed"
  exit 0
fi

sudo=""
if [[ $(id -u) -ne 0 ]]; then
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update
$sudo apt-get install -y --no-install-recommends slurm-wlm munge shellcheck

#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages the test suite uses beyond the Python ones: the Slurm controller,
# node daemon and munge that tests/launch/ start on localhost, shellcheck (which tests/launch/ runs over
# every launch script), and dataset-fashion-mnist (the four original Fashion-MNIST files in
# /usr/share/datasets/fashion-mnist/, which tests/data_prep/ shards end to end).
# Installs only what is missing; does nothing when all of it is there. Needs root (or sudo).
set -euo pipefail

export PATH="$PATH:/usr/sbin:/sbin"  # where Debian puts the daemons; not on a normal user's PATH
packages=()
for pair in slurm-wlm:slurmctld slurm-wlm:slurmd slurm-wlm:sbatch munge:munged shellcheck:shellcheck; do
  command -v "${pair#*:}" >/dev/null 2>&1 || packages+=("${pair%%:*}")
done
[[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]] || packages+=(dataset-fashion-mnist)
if [[ ${#packages[@]} -eq 0 ]]; then
  echo "system test dependencies already installed"
  exit 0
fi
mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u)

sudo=""
if [[ $(id -u) -ne 0 ]]; then
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update
$sudo apt-get install -y --no-install-recommends "${packages[@]}"

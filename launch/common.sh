# shellcheck shell=bash
# Sourced by the launch scripts: how many trainer processes this node runs.
# NPROC_PER_NODE wins; else one per GPU that `nvidia-smi -L` lists; else CPU_PROCS (default 1).
procs_per_node() {
  if [[ -n "${NPROC_PER_NODE:-}" ]]; then
    echo "$NPROC_PER_NODE"
    return
  fi
  local gpus=0
  if command -v nvidia-smi >/dev/null 2>&1; then
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
  fi
  if [[ "$gpus" -gt 0 ]]; then
    echo "$gpus"
  else
    echo "${CPU_PROCS:-1}"
  fi
}

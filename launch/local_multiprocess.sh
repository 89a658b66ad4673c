#!/usr/bin/env bash
# N training processes on this machine (127.0.0.1), CPU collectives over gloo: the same
# multi-process code path as a pod, for testing.
#
# Usage: launch/local_multiprocess.sh N [train flags...]
#   launch/local_multiprocess.sh 2 --config=configs/toy.py:tiny --workdir=runs/toy2
# Env: VLP_MODULE (default vlp_jax.train; e.g. vlp_jax.evaluate), PYTHON (default .venv/bin/python
# when present), VLP_PORT (default: a free port). Each process sees one CPU device unless
# XLA_FLAGS says otherwise. Exit status: the first non-zero status of the processes.
set -euo pipefail
if [[ $# -lt 1 ]]; then
  sed -n '2,10p' "$0"; exit 2
fi
num_processes="$1"; shift
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-}"
if [[ -z "${python}" ]]; then
  if [[ -x "${root}/.venv/bin/python" ]]; then python="${root}/.venv/bin/python"; else python=python3; fi
fi
port="${VLP_PORT:-$("${python}" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
pids=()
for ((i = 0; i < num_processes; i++)); do
  JAX_PLATFORMS=cpu VLP_COORDINATOR_ADDRESS="127.0.0.1:${port}" VLP_NUM_PROCESSES="${num_processes}" \
    VLP_PROCESS_ID="${i}" "${python}" -m "${VLP_MODULE:-vlp_jax.train}" "$@" &
  pids+=("$!")
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' TERM INT
status=0
for pid in "${pids[@]}"; do
  if ! wait "${pid}"; then
    code=$?
    if [[ ${status} -eq 0 ]]; then status=${code}; fi
  fi
done
exit "${status}"

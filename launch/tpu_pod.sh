#!/usr/bin/env bash
# Train on every worker of a Cloud TPU pod slice; jax.distributed.initialize() auto-detects.
#
# Usage: launch/tpu_pod.sh TPU_NAME ZONE [train flags...]
#   launch/tpu_pod.sh my-v4-32 us-central2-b --config=configs/blip.py:base \
#     --workdir=gs://my-bucket/runs/blip_base
# Expects the repository at ~/vlp_jax on every worker with its .venv built (`make venv`)
# (REPO_DIR overrides). The workdir must be shared by all workers (a GCS bucket).
# Preemption: SIGTERM saves a checkpoint; rerunning the same command resumes.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,11p' "$0"; exit 2
fi
tpu_name="$1"; zone="$2"; shift 2
repo_dir="${REPO_DIR:-~/vlp_jax}"
train_flags="$(printf ' %q' "$@")"
gcloud compute tpus tpu-vm ssh "${tpu_name}" --zone="${zone}" --worker=all \
  --command="cd ${repo_dir} && TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m vlp_jax.train --distributed${train_flags}"

#!/usr/bin/env bash
# Train on a Cloud TPU VM (single host or pod slice): create it if needed, install regnet_jax on every worker,
# run main on all workers with a shared workdir (a gs:// bucket), and stream the logs.
#   launch/tpu_vm.sh NAME ZONE ACCELERATOR_TYPE WORKDIR -- MAIN_ARGS...
# e.g. launch/tpu_vm.sh regnet-v4 us-central2-b v4-32 gs://my-bucket/runs/x32 -- \
#        --config=configs/imagenet.py:regnetx_3.2gf --config.data_dir=gs://my-bucket/tfds
# Preemptible/spot VMs: add SPOT=1. Rerunning the same command resumes from the last checkpoint in WORKDIR.
# On preemption the VM sends SIGTERM: every worker checkpoints at the next step boundary and exits 0.
set -euo pipefail
if [ $# -lt 5 ]; then sed -n '2,9p' "$0" >&2; exit 2; fi
name="$1"; zone="$2"; accel="$3"; workdir="$4"; shift 4
[ "$1" = "--" ] && shift
version="${TPU_SOFTWARE_VERSION:-tpu-ubuntu2204-base}"
repo="${REGNET_JAX_REPO:-$(git -C "$(dirname "$0")/.." config --get remote.origin.url || true)}"
ref="${REGNET_JAX_REF:-$(git -C "$(dirname "$0")/.." rev-parse HEAD)}"
if [ -z "$repo" ]; then echo "set REGNET_JAX_REPO to a git URL the TPU workers can clone" >&2; exit 2; fi

if ! gcloud compute tpus tpu-vm describe "$name" --zone "$zone" >/dev/null 2>&1; then
  gcloud compute tpus tpu-vm create "$name" --zone "$zone" --accelerator-type "$accel" --version "$version" \
    ${SPOT:+--spot}
fi
ssh() { gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "$1"; }
ssh "set -e; if [ ! -d regnet_jax ]; then git clone -q '$repo' regnet_jax; fi; cd regnet_jax; git fetch -q; \
     git checkout -q '$ref'; python3 -m venv .venv; .venv/bin/pip install -q -U pip; \
     .venv/bin/pip install -q -e . 'jax[tpu]' gcsfs"
args=$(printf '%q ' "$@")
# JAX discovers the other workers of the slice itself (REGNET_DISTRIBUTED=auto).
ssh "cd regnet_jax && REGNET_DISTRIBUTED=auto .venv/bin/python -m regnet_jax.main --workdir='$workdir' $args 2>&1"

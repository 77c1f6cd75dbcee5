#!/usr/bin/env bash
# Run N JAX processes of regnet_jax.main on this machine (coordinator on 127.0.0.1), for testing multi-host code.
#   launch/local.sh N [--devices-per-process=D] [--port=P] -- MAIN_ARGS...
# e.g. launch/local.sh 2 --devices-per-process=2 -- --config=configs/regnetx32.py --workdir=/tmp/run
# Each process gets D CPU devices (XLA host platform). Logs: one prefixed stream per process. The script exits
# with the first non-zero exit code of any process (and stops the others), or 0.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,7p' "$0" >&2; exit 2
fi
n="$1"; shift
devices=1; port=$((20000 + RANDOM % 20000)); python="${PYTHON:-python}"
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  case "$1" in
    --devices-per-process=*) devices="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    *) echo "unknown option $1 (before --)" >&2; exit 2 ;;
  esac
  shift
done
[ "${1:-}" = "--" ] && shift
case "$n" in ''|*[!0-9]*|0) echo "N must be a positive integer, got '$n'" >&2; exit 2 ;; esac

pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; }
trap 'cleanup; wait; exit 143' TERM INT
for ((i = 0; i < n; i++)); do
  REGNET_DISTRIBUTED=explicit REGNET_COORDINATOR="127.0.0.1:$port" REGNET_NUM_PROCESSES="$n" REGNET_PROCESS_ID="$i" \
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$devices ${XLA_FLAGS:-}" \
    "$python" -m regnet_jax.main "$@" > >(sed -u "s/^/[p$i] /") 2> >(sed -u "s/^/[p$i] /" >&2) &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do
  if ! wait "$p"; then
    code=$?
    if [ "$status" = 0 ]; then status=$code; cleanup; fi
  fi
done
exit "$status"

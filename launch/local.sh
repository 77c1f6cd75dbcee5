#!/usr/bin/env bash
# Run N JAX processes of regnet_jax.main on this machine (coordinator on 127.0.0.1), for testing multi-host code.
#   launch/local.sh N [--devices-per-process=D] [--port=P] [--grace=S] -- MAIN_ARGS...
# e.g. launch/local.sh 2 --devices-per-process=2 -- --config=configs/regnetx32.py --workdir=/tmp/run
# Each process gets D CPU devices (XLA host platform). Logs: one prefixed stream per process. The script exits
# with the first non-zero exit code of any process, or 0. When one process fails, or this script gets SIGTERM/
# SIGINT, the others get SIGTERM (they checkpoint at the next step boundary) and SIGKILL S seconds later (default
# 60: a process blocked in a collective with a dead peer never reaches a step boundary).
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,9p' "$0" >&2; exit 2
fi
n="$1"; shift
devices=1; port=$((20000 + RANDOM % 20000)); grace=60; python="${PYTHON:-python}"
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  case "$1" in
    --devices-per-process=*) devices="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    --grace=*) grace="${1#*=}" ;;
    *) echo "unknown option $1 (before --)" >&2; exit 2 ;;
  esac
  shift
done
[ "${1:-}" = "--" ] && shift
case "$n" in ''|*[!0-9]*|0) echo "N must be a positive integer, got '$n'" >&2; exit 2 ;; esac

pids=()
deadline=""
stop() {  # SIGTERM the processes still running (once), SIGKILL them after $grace seconds
  [ -n "$deadline" ] && return 0
  deadline=$((SECONDS + grace + 1))  # SECONDS ticks in whole seconds
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
}
trap stop TERM INT
for ((i = 0; i < n; i++)); do
  REGNET_DISTRIBUTED=explicit REGNET_COORDINATOR="127.0.0.1:$port" REGNET_NUM_PROCESSES="$n" REGNET_PROCESS_ID="$i" \
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$devices ${XLA_FLAGS:-}" \
    "$python" -m regnet_jax.main "$@" > >(sed -u "s/^/[p$i] /") 2> >(sed -u "s/^/[p$i] /" >&2) &
  pids+=($!)
done
# Reap processes in whatever order they end (waiting in launch order would hang on a process blocked in a
# collective whose peer died): the first non-zero exit code stops the others.
status=0
while [ ${#pids[@]} -gt 0 ]; do
  running=" $(jobs -rp | tr '\n' ' ') "
  for i in "${!pids[@]}"; do
    p="${pids[$i]}"
    case "$running" in *" $p "*) continue ;; esac
    code=0; wait "$p" || code=$?
    unset 'pids[i]'
    if [ "$code" != 0 ] && [ "$status" = 0 ]; then status=$code; stop; fi
  done
  if [ -n "$deadline" ] && [ "$SECONDS" -ge "$deadline" ]; then
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  fi
  [ ${#pids[@]} -gt 0 ] && sleep 0.2
done
exit "$status"

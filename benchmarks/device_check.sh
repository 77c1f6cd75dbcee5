#!/usr/bin/env bash
# The accelerator check of issue 16, for one NVIDIA GPU with JAX, PyTorch and timm already installed, no network:
#   bash benchmarks/device_check.sh [WHEEL_DIR] [OUT.jsonl]
# WHEEL_DIR: a folder of the pure-Python wheels regnet_jax needs beyond those (ml_collections; make it here with
# `pip download --only-binary=:all: --no-deps -d wheels ml_collections`); installed with --no-index. Runs in
# under 8 minutes (benchmarks/device_check.py skips the rows past its --budget-s); one JSON line per row in OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
wheels="${1:-}"
out="${2:-device_check.jsonl}"
py="${PYTHON:-python3}"
if [ -n "$wheels" ]; then
  [ -d "$wheels" ] || { echo "error: wheel folder '$wheels' does not exist" >&2; exit 2; }
  "$py" -m pip install --quiet --no-index --find-links "$wheels" "$wheels"/*.whl
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$py" -c "import jax; print('jax', jax.__version__, jax.devices())"
# Dense peaks (TFLOP/s) by GPU model, for MFU: f32 counts TF32 tensor cores, which XLA and PyTorch use for f32
# convolutions by default on Ampere and newer.
name="$("$py" -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')")"
case "$name" in
  *H100*|*H200*) peaks=(--peak-tflops-f32=495 --peak-tflops-bf16=989) ;;
  *A100*) peaks=(--peak-tflops-f32=156 --peak-tflops-bf16=312) ;;
  *) peaks=() ;;
esac
echo "device: $name ${peaks[*]:-(no peak known: no MFU)}"
extra=()
if [ "$name" = cpu ]; then  # the logic check (tests/test_bench.py): tiny and quick
  extra=(--models=regnetx_200mf --batch-size=2 --image-size=32 --impls=xla,split --dtypes=f32 --steps=1 --warmup=0)
fi
timeout 470 "$py" benchmarks/device_check.py "${peaks[@]}" "${extra[@]}" --budget-s=400 --out="$out" "${@:3}"

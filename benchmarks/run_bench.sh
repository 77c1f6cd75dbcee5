#!/usr/bin/env bash
# Runs the README Performance tables in one go (quiet machine, ~45 min on 2 cores): the machine's GEMM peak and
# bandwidth first (benchmarks/peak.py, one JSON line with "peak_f32_gflop_s"), then train steps of every conv
# formulation, both batch norms, f32 and bf16, eval steps, the allocator off, and compile times. Rows with
# --compare-torch time the PyTorch reference in the same run (each round under its faster environment, see bench
# --torch-env). JSON lines to $1.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-bench_results.jsonl}"
PY=.venv/bin/python
B="$PY -m regnet_jax.bench"
$PY benchmarks/peak.py --json > "$OUT"
PEAK=$($PY -c "import json,sys; print(json.loads(open(sys.argv[1]).readline())['peak_f32_gflop_s'])" "$OUT")
PEAKB=$($PY -c "import json,sys; print(json.loads(open(sys.argv[1]).readline())['peak_bf16_gflop_s'])" "$OUT")
X32="--model=regnetx32 --batch-size=128 --image-size=96 --channels=1 --num-classes=10 --steps=12 --warmup=3 --json"
X400="--model=regnetx_400mf --batch-size=32 --image-size=224 --steps=10 --warmup=2 --json"
Y800="--model=regnety_800mf --batch-size=32 --image-size=224 --steps=8 --warmup=2 --json"
{
for X in "$X32" "$X400"; do
  $B $X --compare-torch --rounds=3 --peak-gflops=$PEAK     # auto: onednn_blocked convs + native BN on this CPU (f32)
  $B $X --conv-impl=onednn                                           # the same kernels on NHWC activations
  $B $X --conv-impl=onednn --bn-impl=xla
  for i in custom_vjp split im2col; do $B $X --conv-impl=$i --bn-impl=xla; done
  $B $X --half-precision --compare-torch --rounds=3 --peak-gflops=$PEAKB  # PyTorch under autocast bf16
  $B $X --half-precision --conv-impl=onednn_blocked                   # auto keeps NHWC in bf16; this is why
  $B $X --half-precision --conv-impl=onednn --bn-impl=xla
  for i in custom_vjp split im2col; do $B $X --half-precision --conv-impl=$i --bn-impl=xla; done
  # The allocator setting (regnet_jax/runtime.py) off for us; PyTorch still gets its faster environment.
  REGNET_JAX_MALLOC=system $B $X --compare-torch --rounds=3
done
# Inference (BN folded into the oneDNN convs); PyTorch under torch.inference_mode.
for X in "$X32" "$Y800"; do
  $B $X --mode=eval --compare-torch --rounds=3 --peak-gflops=$PEAK
  $B $X --mode=eval --half-precision --compare-torch --rounds=3 --peak-gflops=$PEAKB
  $B $X --mode=eval --conv-impl=xla --bn-impl=xla                  # plain Flax: no folding
done
$B --model=regnetx32 --batch-size=128 --image-size=96 --channels=1 --num-classes=10 --steps=2 --warmup=1 --json \
    --conv-impl=xla --bn-impl=xla
# Compile time with depth: a small and a deep model, unrolled and with identical blocks scanned.
C="--batch-size=2 --image-size=224 --steps=1 --warmup=0 --json"
for m in regnety_200mf regnety_32gf; do $B --model=$m $C; $B --model=$m $C --scan-blocks; done
} >> "$OUT"

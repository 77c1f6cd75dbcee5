#!/usr/bin/env bash
# Runs the README Performance table: every conv formulation, both batch norms, f32 and bf16, with the PyTorch
# reference timed in the same run (in a child process with the same environment); JSON lines to $1.
cd "$(dirname "$0")/.."
B=".venv/bin/python -m regnet_jax.bench"
X32="--model=regnetx32 --batch-size=128 --image-size=96 --channels=1 --num-classes=10 --steps=12 --warmup=3 --json"
X400="--model=regnetx_400mf --batch-size=32 --image-size=224 --steps=10 --warmup=2 --json"
{
for X in "$X32" "$X400"; do
  $B $X --compare-torch --rounds=3                   # auto: onednn_blocked convs + native BN on this CPU (f32)
  $B $X --conv-impl=onednn                                           # the same kernels on NHWC activations
  $B $X --conv-impl=onednn --bn-impl=xla
  for i in custom_vjp split im2col; do $B $X --conv-impl=$i --bn-impl=xla; done
  $B $X --half-precision --compare-torch --rounds=3                  # PyTorch under autocast bf16
  $B $X --half-precision --conv-impl=onednn_blocked                   # auto keeps NHWC in bf16; this is why
  $B $X --half-precision --conv-impl=onednn --bn-impl=xla
  for i in custom_vjp split im2col; do $B $X --half-precision --conv-impl=$i --bn-impl=xla; done
  # The allocator setting (regnet_jax/runtime.py) off, for both frameworks.
  REGNET_JAX_MALLOC=system $B $X --compare-torch --rounds=3
done
$B --model=regnetx32 --batch-size=128 --image-size=96 --channels=1 --num-classes=10 --steps=2 --warmup=1 --json \
    --conv-impl=xla --bn-impl=xla
# Compile time with depth: a small and a deep model, unrolled and with identical blocks scanned.
C="--batch-size=2 --image-size=224 --steps=1 --warmup=0 --json"
for m in regnety_200mf regnety_32gf; do $B --model=$m $C; $B --model=$m $C --scan-blocks; done
} > "${1:-bench_results.jsonl}"

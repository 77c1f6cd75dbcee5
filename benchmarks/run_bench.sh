#!/usr/bin/env bash
# Runs the README Performance table: every conv formulation, f32 and bf16, with the PyTorch reference; JSON lines to $1.
cd "$(dirname "$0")/.."
B=".venv/bin/python -m regnet_jax.bench"
X32="--model=regnetx32 --batch-size=128 --image-size=96 --channels=1 --num-classes=10 --steps=8 --warmup=2 --json"
X400="--model=regnetx_400mf --batch-size=32 --image-size=224 --steps=6 --warmup=2 --json"
{
$B $X32 --conv-impl=auto --compare-torch
for i in onednn custom_vjp split im2col; do $B $X32 --conv-impl=$i; done
$B --model=regnetx32 --batch-size=128 --image-size=96 --channels=1 --num-classes=10 --steps=2 --warmup=1 --json --conv-impl=xla
for i in auto onednn custom_vjp split im2col; do $B $X32 --conv-impl=$i --half-precision; done
$B $X400 --conv-impl=auto --compare-torch
for i in onednn custom_vjp split im2col; do $B $X400 --conv-impl=$i; done
$B $X400 --conv-impl=auto --half-precision
# Compile time with depth: a small and a deep model, unrolled and with identical blocks scanned.
C="--batch-size=2 --image-size=224 --steps=1 --warmup=0 --json"
for m in regnety_200mf regnety_32gf; do $B --model=$m $C; $B --model=$m $C --scan-blocks; done
} > "${1:-bench_results.jsonl}"

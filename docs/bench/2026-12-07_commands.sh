# The commands behind docs/bench/2026-12-07_*.json*: bash docs/bench/2026-12-07_commands.sh (quiet machine, ~12 min)
cd "$(dirname "$0")/../.."
B=".venv/bin/python -m regnet_jax.bench"
.venv/bin/python benchmarks/peak.py --json > docs/bench/2026-12-07_peak.json
PEAK=$(.venv/bin/python -c "import json; print(json.load(open('docs/bench/2026-12-07_peak.json'))['peak_f32_gflop_s'])")
PEAKB=$(.venv/bin/python -c "import json; print(json.load(open('docs/bench/2026-12-07_peak.json'))['peak_bf16_gflop_s'])")
X32="--model=regnetx32 --batch-size=128 --image-size=96 --channels=1 --num-classes=10 --steps=12 --warmup=3 --json"
Y800="--model=regnety_800mf --batch-size=32 --image-size=224 --steps=8 --warmup=2 --json"
{
$B $X32 --compare-torch --rounds=2 --peak-gflops=$PEAK
$B $X32 --half-precision --compare-torch --rounds=2 --peak-gflops=$PEAKB
$B $X32 --mode=eval --compare-torch --rounds=2 --peak-gflops=$PEAK
$B $X32 --mode=eval --half-precision --compare-torch --rounds=2 --peak-gflops=$PEAKB
$B $Y800 --mode=eval --compare-torch --rounds=2 --peak-gflops=$PEAK
$B $Y800 --mode=eval --half-precision --compare-torch --rounds=2 --peak-gflops=$PEAKB
} > docs/bench/2026-12-07_issue16.jsonl

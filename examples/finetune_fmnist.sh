#!/usr/bin/env bash
# The README's fine-tuning table: regnetx32 trained on Fashion-MNIST classes 0-4, then transferred to an image
# folder of classes 5-9 (written from the other half of the IDX files) by a linear probe and by full fine-tuning,
# against training from scratch for the same number of steps. Usage:
#   bash examples/finetune_fmnist.sh [OUT_DIR]      (default /tmp/regnet_finetune; ~15 min on 2 cores)
# Prints the table and writes OUT_DIR/results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/regnet_finetune}"
py=.venv/bin/python
mkdir -p "$out"
# Two ImageFolder trees of PNG files: classes 0-4 and classes 5-9, each with train/ (6,000 a class) and val/.
[ -d "$out/fmnist_0to4/val" ] || $py -m regnet_jax.data.export fashion_mnist "$out/fmnist_0to4" --classes=0,1,2,3,4
[ -d "$out/fmnist_5to9/val" ] || $py -m regnet_jax.data.export fashion_mnist "$out/fmnist_5to9" --classes=5,6,7,8,9

# Same recipe everywhere: configs/regnetx32.py (96x96, batch 128, SGD + Nesterov, cosine, flips) with the
# image folders' default normalisation, so the two halves are preprocessed identically.
common=(--config=configs/regnetx32.py --config.progress_bar=False)
steps=234  # one epoch of the 30,000 images of classes 5-9 at batch 128
run() {  # NAME ARGS...: one run in its own workdir (rerunning resumes or skips a finished one)
  local name=$1; shift
  $py -m regnet_jax.main "${common[@]}" --workdir="$out/$name" "$@" 2>&1 | grep -E "^(done|error)" || true
}
run pretrain_0to4 --config.dataset="folder:$out/fmnist_0to4" --config.num_epochs=3
ft=(--config.dataset="folder:$out/fmnist_5to9" --config.num_train_steps=$steps --config.warmup_epochs=0)
run scratch "${ft[@]}"
run head_only "${ft[@]}" --config.init_from="$out/pretrain_0to4" --config.trainable=head
run full_lr0.1 "${ft[@]}" --config.init_from="$out/pretrain_0to4"
run full_lr0.02 "${ft[@]}" --config.init_from="$out/pretrain_0to4" --config.learning_rate=0.02

$py - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
rows = []
for name in ("pretrain_0to4", "scratch", "head_only", "full_lr0.1", "full_lr0.02"):
  lines = [json.loads(l) for l in open(os.path.join(out, name, "metrics.jsonl"))]
  ev = [l for l in lines if "eval_accuracy" in l][-1]
  rows.append({"run": name, "step": ev["step"], "eval_accuracy": ev["eval_accuracy"]})
with open(os.path.join(out, "results.jsonl"), "w") as f:
  f.writelines(json.dumps(r) + "\n" for r in rows)
print("| run | steps | val accuracy |\n|---|---|---|")
for r in rows:
  print(f"| {r['run']} | {r['step']} | {100 * r['eval_accuracy']:.2f}% |")
PY

#!/usr/bin/env bash
# One-step set-up: a virtual environment in .venv with regnet_jax installed, plus Fashion-MNIST where the
# Debian package can provide it. Usage: bash scripts/setup.sh [EXTRAS], e.g. `bash scripts/setup.sh test`.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python3 -m venv .venv
.venv/bin/pip install -q -U pip
if [ -n "$extras" ]; then
  .venv/bin/pip install -q -e ".[$extras]"
else
  .venv/bin/pip install -q -e .
fi
# Compile the oneDNN convolution extension now rather than on the first training step (x86-64 Linux; elsewhere
# it says why not and conv_impl=auto uses the pure-XLA formulations).
.venv/bin/python -m regnet_jax.onednn || echo "note: conv_impl=onednn unavailable; auto falls back to XLA" >&2
# The allocator's block cache (regnet_jax/runtime.py), which the entry points preload; a second's build otherwise
# done by the first command.
.venv/bin/python -c "from regnet_jax import runtime; runtime.build_block_cache()" || true
# Fashion-MNIST's four IDX files from Debian (offline); without apt (or root) the TFDS download path is used.
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
      || echo "note: apt-get could not install dataset-fashion-mnist; training will try TFDS" >&2
  else
    echo "note: Fashion-MNIST not in /usr/share/datasets/fashion-mnist; training will download it with TFDS" >&2
  fi
fi

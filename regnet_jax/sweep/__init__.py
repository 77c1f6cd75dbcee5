"""Design-space exploration (Radosavovic et al. 2020): spaces, sampling in a complexity regime, resumable and
shardable sweeps, and their analysis (EDFs, bootstrap, trends, RegNet linear fits).

  python -m regnet_jax.sweep.sample --space=RegNet --n=5 --flops=360e6,400e6 --json
  python -m regnet_jax.sweep --config=configs/sweeps/fashion_mnist_cpu.py --workdir=DIR [--shard=I/N]
  python -m regnet_jax.sweep.analyze DIR [DIR ...] --out=edf.png

`spec_to_json` / `spec_from_json` convert an AnyNetSpec to and from the string the trainer reads from
`config.model_spec` (`spec_to_dict` / `spec_from_dict`: the same as a dict). Importing this package loads no
JAX and no matplotlib.
"""

from regnet_jax.specs_io import regnet_to_dict, spec_from_dict, spec_from_json, spec_to_dict, spec_to_json

__all__ = ["regnet_to_dict", "spec_from_dict", "spec_from_json", "spec_to_dict", "spec_to_json"]

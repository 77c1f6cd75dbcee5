"""d2l RegNetX32's squeeze-excitation twin (RegNetY32) with the same Fashion-MNIST recipe."""

from regnet_jax.config_files import sibling


def get_config(arg: str | None = None):
  c = sibling(__file__, "regnetx32.py").get_config(arg)
  c.model = "regnety32"
  return c

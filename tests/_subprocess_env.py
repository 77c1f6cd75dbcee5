"""Environment for tests that run `python -m regnet_jax.main` in subprocesses (test_faults, test_multihost)."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main_subprocess_env(cache_dir, **overrides) -> dict[str, str]:
  """This environment minus REGNET_* knobs, on the CPU, with regnet_jax importable and a persistent XLA cache in
  cache_dir shared by the session's runs (it changes which process compiles, not what runs)."""
  e = {k: v for k, v in os.environ.items() if not k.startswith("REGNET_")}
  e.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
           JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  e.update(overrides)
  return e

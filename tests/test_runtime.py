"""The entry points' re-exec with glibc's huge-page malloc tunable (regnet_jax/runtime.py)."""
import os
import subprocess
import sys

import pytest

from regnet_jax import runtime

MADVISE = "always [madvise] never\n"


def test_adds_the_tunable_once_and_keeps_other_tunables():
  env = runtime.thp_tunable_env({"PATH": "/bin"}, thp_mode=MADVISE, libc="glibc")
  assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  env = runtime.thp_tunable_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, thp_mode=MADVISE, libc="glibc")
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  # Already set (by us after the re-exec, or by the user with any value): nothing changes, so no exec loop.
  assert runtime.thp_tunable_env(env, thp_mode=MADVISE, libc="glibc") is None
  assert runtime.thp_tunable_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, thp_mode=MADVISE,
                                 libc="glibc") is None


@pytest.mark.parametrize("environ, mode, libc", [
    ({"REGNET_JAX_THP": "0"}, MADVISE, "glibc"),   # opted out
    ({}, "always madvise [never]\n", "glibc"),      # THP off: the tunable would do nothing
    ({}, None, "glibc"),                            # no THP in this kernel
    ({}, MADVISE, ""),                              # musl or unknown libc
])
def test_leaves_the_process_alone(environ, mode, libc):
  assert runtime.thp_tunable_env(environ, thp_mode=mode, libc=libc) is None


def _child_tunables(extra_env):
  code = ("import os\nfrom regnet_jax import runtime\nruntime.reexec_with_huge_pages()\n"
          "print('TUNABLES=' + os.environ.get('GLIBC_TUNABLES', ''))")
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "REGNET_JAX_THP")}
  out = subprocess.run([sys.executable, "-c", code], env={**env, **extra_env}, capture_output=True, text=True,
                       timeout=120, check=True).stdout
  return [line for line in out.splitlines() if line.startswith("TUNABLES=")]


@pytest.mark.skipif(sys.platform != "linux", reason="Linux/glibc only")
def test_reexec_sets_the_tunable_in_a_real_process():
  try:
    with open(runtime.THP_MODE_FILE) as f:
      thp_on = "[never]" not in f.read()
  except OSError:
    thp_on = False
  lines = _child_tunables({})
  # One line: the pre-exec process never reaches the print.
  assert lines == (["TUNABLES=glibc.malloc.hugetlb=1"] if thp_on else ["TUNABLES="])
  assert _child_tunables({"REGNET_JAX_THP": "0"}) == ["TUNABLES="]

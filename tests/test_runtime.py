"""The entry points' re-exec with glibc's malloc tunables (regnet_jax/runtime.py)."""
import os
import subprocess
import sys

import pytest

from regnet_jax import runtime

MADVISE = "always [madvise] never\n"


RETAIN = ":".join(runtime.RETAIN_TUNABLES)


def test_adds_the_tunables_once_and_keeps_other_tunables():
  env = runtime.malloc_tunables_env({"PATH": "/bin"}, thp_mode=MADVISE, libc="glibc")
  assert env == {"PATH": "/bin", "GLIBC_TUNABLES": f"glibc.malloc.hugetlb=1:{RETAIN}"}
  # The user's own value of a tunable wins (arena_max=2 here); the others are added.
  env = runtime.malloc_tunables_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, thp_mode=MADVISE, libc="glibc")
  assert env["GLIBC_TUNABLES"] == ("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:"
                                   f"glibc.malloc.trim_threshold={1 << 40}")
  # Already set (by us after the re-exec, or by the user with any value): nothing changes, so no exec loop.
  assert runtime.malloc_tunables_env(env, thp_mode=MADVISE, libc="glibc") is None
  assert runtime.malloc_tunables_env({"GLIBC_TUNABLES": f"glibc.malloc.hugetlb=0:{RETAIN}"}, thp_mode=MADVISE,
                                     libc="glibc") is None


@pytest.mark.parametrize("environ, nodes, want", [
    ({}, False, f"glibc.malloc.hugetlb=1:{RETAIN}"),                               # CPU machine: keep freed memory
    ({}, True, "glibc.malloc.hugetlb=1"),                                          # GPU/TPU host: huge pages only
    ({"JAX_PLATFORMS": "cpu"}, True, f"glibc.malloc.hugetlb=1:{RETAIN}"),         # CPU asked for explicitly
    ({"JAX_PLATFORMS": "cuda"}, False, "glibc.malloc.hugetlb=1"),
    ({"REGNET_JAX_MALLOC": "retain"}, True, f"glibc.malloc.hugetlb=1:{RETAIN}"),
    ({"REGNET_JAX_MALLOC": "system"}, False, "glibc.malloc.hugetlb=1"),
    ({"REGNET_JAX_THP": "0"}, False, RETAIN),
])
def test_malloc_modes(environ, nodes, want):
  env = runtime.malloc_tunables_env(environ, thp_mode=MADVISE, libc="glibc", accelerator_nodes=nodes)
  assert env["GLIBC_TUNABLES"] == want


@pytest.mark.parametrize("environ, want", [
    ({}, "glibc.malloc.hugetlb=1"),                                # auto: not on a machine with 8 GiB
    ({"REGNET_JAX_MALLOC": "retain"}, f"glibc.malloc.hugetlb=1:{RETAIN}"),
])
def test_auto_does_not_retain_on_small_machines(environ, want):
  env = runtime.malloc_tunables_env(environ, thp_mode=MADVISE, libc="glibc", memory_bytes=8 << 30)
  assert env["GLIBC_TUNABLES"] == want


def test_bad_malloc_mode_says_what_is_allowed():
  with pytest.raises(ValueError, match="REGNET_JAX_MALLOC='fast' is not one of auto, retain, system"):
    runtime.malloc_tunables_env({"REGNET_JAX_MALLOC": "fast"}, thp_mode=MADVISE, libc="glibc")


@pytest.mark.parametrize("environ, mode, libc", [
    ({"REGNET_JAX_THP": "0", "REGNET_JAX_MALLOC": "system"}, MADVISE, "glibc"),   # opted out of both
    ({"REGNET_JAX_MALLOC": "system"}, "always madvise [never]\n", "glibc"),      # THP off: hugetlb does nothing
    ({"REGNET_JAX_MALLOC": "system"}, None, "glibc"),                            # no THP in this kernel
    ({}, MADVISE, ""),                                                           # musl or unknown libc
])
def test_leaves_the_process_alone(environ, mode, libc):
  assert runtime.malloc_tunables_env(environ, thp_mode=mode, libc=libc) is None


def _child_tunables(extra_env):
  code = ("import os\nfrom regnet_jax import runtime\nruntime.reexec_with_malloc_tunables()\n"
          "print('TUNABLES=' + os.environ.get('GLIBC_TUNABLES', ''))")
  env = {k: v for k, v in os.environ.items()
         if k not in ("GLIBC_TUNABLES", "REGNET_JAX_THP", "REGNET_JAX_MALLOC", "JAX_PLATFORMS")}
  out = subprocess.run([sys.executable, "-c", code], env={**env, **extra_env}, capture_output=True, text=True,
                       timeout=120, check=True).stdout
  return [line for line in out.splitlines() if line.startswith("TUNABLES=")]


@pytest.mark.skipif(sys.platform != "linux", reason="Linux/glibc only")
def test_reexec_sets_the_tunables_in_a_real_process():
  try:
    with open(runtime.THP_MODE_FILE) as f:
      thp_on = "[never]" not in f.read()
  except OSError:
    thp_on = False
  huge = ["glibc.malloc.hugetlb=1"] if thp_on else []
  # One line: the pre-exec process never reaches the print.
  want = "TUNABLES=" + ":".join(huge + list(runtime.RETAIN_TUNABLES))
  assert _child_tunables({"REGNET_JAX_MALLOC": "retain"}) == [want]
  assert _child_tunables({"REGNET_JAX_THP": "0", "REGNET_JAX_MALLOC": "system"}) == ["TUNABLES="]

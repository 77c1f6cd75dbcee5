"""The entry points' re-exec with glibc's malloc tunables (regnet_jax/runtime.py)."""
import os
import subprocess
import sys

import pytest

from regnet_jax import runtime

MADVISE = "always [madvise] never\n"


RETAIN = ":".join(runtime.RETAIN_TUNABLES)
LIB = "/cache/block_cache-0/libregnet_block_cache.so"
HUGE = "glibc.malloc.hugetlb=1"


def _env(environ, *, thp_mode=MADVISE, libc="glibc", **kw):
  return runtime.allocator_env(environ, thp_mode=thp_mode, libc=libc, **kw)


def test_adds_the_settings_once_and_keeps_the_users():
  env = _env({"PATH": "/bin"}, block_cache=LIB)
  assert env == {"PATH": "/bin", "GLIBC_TUNABLES": HUGE, "LD_PRELOAD": LIB}
  # Already set (by us after the re-exec): nothing changes, so no exec loop.
  assert _env(env, block_cache=LIB) is None
  # The user's own value of a tunable wins (arena_max=2 here); the others are added.
  env = _env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "REGNET_JAX_MALLOC": "retain"})
  assert env["GLIBC_TUNABLES"] == ("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:"
                                   f"glibc.malloc.trim_threshold={1 << 40}")
  assert _env(env) is None
  assert _env({"GLIBC_TUNABLES": f"glibc.malloc.hugetlb=0:{RETAIN}", "REGNET_JAX_MALLOC": "retain"}) is None


@pytest.mark.parametrize("environ", [
    {"PATH": "/bin"},
    {"PATH": "/bin", "LD_PRELOAD": "/x/a.so", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
    {"REGNET_JAX_MALLOC": "retain", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
])
def test_stock_env_undoes_the_allocator_settings(environ):
  """What bench's PyTorch reference runs under with --torch-env=stock: the user's environment as it was."""
  env = _env(environ, block_cache=LIB)
  assert env is not None and env != environ
  assert runtime.stock_env(env) == environ  # the user's preload and arena_max=2 kept, ours gone


@pytest.mark.parametrize("environ, nodes, lib, tunables, preload", [
    ({}, False, LIB, HUGE, LIB),                                          # CPU machine: the block cache
    ({}, False, None, f"{HUGE}:{RETAIN}", None),                          # no C compiler: glibc keeps memory
    ({}, True, LIB, HUGE, None),                                          # GPU/TPU host: huge pages only
    ({"JAX_PLATFORMS": "cpu"}, True, LIB, HUGE, LIB),                     # CPU asked for explicitly
    ({"JAX_PLATFORMS": "cuda"}, False, LIB, HUGE, None),
    ({"LD_PRELOAD": "/x/libjemalloc.so"}, False, LIB, f"{HUGE}:{RETAIN}", "/x/libjemalloc.so"),  # theirs wins
    ({"REGNET_JAX_MALLOC": "blocks"}, True, LIB, HUGE, LIB),
    ({"REGNET_JAX_MALLOC": "blocks", "LD_PRELOAD": "/x/a.so"}, False, LIB, HUGE, f"{LIB} /x/a.so"),
    ({"REGNET_JAX_MALLOC": "retain"}, True, LIB, f"{HUGE}:{RETAIN}", None),
    ({"REGNET_JAX_MALLOC": "system"}, False, LIB, HUGE, None),
    ({"REGNET_JAX_THP": "0"}, False, LIB, None, LIB),
    ({"REGNET_JAX_THP": "0", "REGNET_JAX_MALLOC": "retain"}, False, LIB, RETAIN, None),
])
def test_malloc_modes(environ, nodes, lib, tunables, preload):
  env = _env(environ, accelerator_nodes=nodes, block_cache=lib)
  assert env.get("GLIBC_TUNABLES") == tunables
  assert env.get("LD_PRELOAD") == preload


@pytest.mark.parametrize("environ, tunables, preload", [
    ({}, HUGE, LIB),                                 # the block cache costs no memory: used on small machines too
    ({"LD_PRELOAD": "/x/a.so"}, HUGE, "/x/a.so"),    # but the retained heap is not
    ({"REGNET_JAX_MALLOC": "retain"}, f"{HUGE}:{RETAIN}", None),
])
def test_small_machines(environ, tunables, preload):
  env = _env(environ, memory_bytes=8 << 30, block_cache=LIB)
  assert env.get("GLIBC_TUNABLES") == tunables
  assert env.get("LD_PRELOAD") == preload


@pytest.mark.parametrize("environ, match", [
    ({"REGNET_JAX_MALLOC": "fast"}, "REGNET_JAX_MALLOC='fast' is not one of auto, blocks, retain, system"),
    ({"REGNET_JAX_MALLOC": "blocks"}, "block-cache library could not be built .* REGNET_JAX_MALLOC=retain"),
    ({"REGNET_JAX_BLOCK_MIN_MB": "0"}, "REGNET_JAX_BLOCK_MIN_MB='0' is not a positive integer"),
    ({"REGNET_JAX_BLOCK_CACHE": "-1"}, "REGNET_JAX_BLOCK_CACHE='-1' is not a non-negative integer"),
])
def test_bad_settings_say_what_is_allowed(environ, match):
  with pytest.raises(ValueError, match=match):
    _env(environ, block_cache=None)


@pytest.mark.parametrize("environ, mode, libc", [
    ({"REGNET_JAX_THP": "0", "REGNET_JAX_MALLOC": "system"}, MADVISE, "glibc"),   # opted out of both
    ({"REGNET_JAX_MALLOC": "system"}, "always madvise [never]\n", "glibc"),      # THP off: hugetlb does nothing
    ({"REGNET_JAX_MALLOC": "system"}, None, "glibc"),                            # no THP in this kernel
    ({}, MADVISE, ""),                                                           # musl or unknown libc
])
def test_leaves_the_process_alone(environ, mode, libc):
  assert _env(environ, thp_mode=mode, libc=libc, block_cache=LIB) is None


def _child_settings(extra_env):
  code = ("import os\nfrom regnet_jax import runtime\nruntime.reexec_with_allocator()\n"
          "print('TUNABLES=' + os.environ.get('GLIBC_TUNABLES', ''))\n"
          "print('PRELOAD=' + os.environ.get('LD_PRELOAD', ''))\n"
          "print('MAPS=' + str('libregnet_block_cache' in open('/proc/self/maps').read()))")
  env = {k: v for k, v in os.environ.items()
         if k not in ("GLIBC_TUNABLES", "REGNET_JAX_THP", "REGNET_JAX_MALLOC", "JAX_PLATFORMS", "LD_PRELOAD")}
  out = subprocess.run([sys.executable, "-c", code], env={**env, **extra_env}, capture_output=True, text=True,
                       timeout=120, check=True).stdout
  return [line for line in out.splitlines() if line.startswith(("TUNABLES=", "PRELOAD=", "MAPS="))]


@pytest.mark.skipif(sys.platform != "linux", reason="Linux/glibc only")
def test_reexec_sets_the_allocator_in_a_real_process(tmp_path, monkeypatch):
  try:
    with open(runtime.THP_MODE_FILE) as f:
      thp_on = "[never]" not in f.read()
  except OSError:
    thp_on = False
  huge = [HUGE] if thp_on else []
  monkeypatch.setenv("REGNET_JAX_CACHE", str(tmp_path))
  lib = runtime.build_block_cache()
  assert lib is not None and lib.startswith(str(tmp_path)), "needs a C compiler (gcc), as the oneDNN extension"
  # One line each: the pre-exec process never reaches the prints.
  assert _child_settings({"REGNET_JAX_MALLOC": "retain"}) == [
      "TUNABLES=" + ":".join(huge + list(runtime.RETAIN_TUNABLES)), "PRELOAD=", "MAPS=False"]
  assert _child_settings({"REGNET_JAX_MALLOC": "blocks"}) == ["TUNABLES=" + ":".join(huge), f"PRELOAD={lib}",
                                                              "MAPS=True"]
  assert _child_settings({"REGNET_JAX_THP": "0", "REGNET_JAX_MALLOC": "system"}) == [
      "TUNABLES=", "PRELOAD=", "MAPS=False"]

"""regnet_jax/csrc/block_cache.c, the malloc interposer that keeps freed big blocks (runtime.py's `blocks` mode).

Each case runs in a child process with the library preloaded, calling libc's malloc family through ctypes."""
import os
import subprocess
import sys
import textwrap

import pytest

from regnet_jax import runtime

pytestmark = pytest.mark.skipif(sys.platform != "linux" or __import__("platform").libc_ver()[0] != "glibc",
                                reason="an LD_PRELOAD malloc for Linux/glibc")

PRELUDE = """
import ctypes, os, sys
libc = ctypes.CDLL(None)
for name, res, args in [("malloc", ctypes.c_void_p, [ctypes.c_size_t]), ("free", None, [ctypes.c_void_p]),
                        ("calloc", ctypes.c_void_p, [ctypes.c_size_t, ctypes.c_size_t]),
                        ("realloc", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t]),
                        ("posix_memalign", ctypes.c_int, [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t,
                                                          ctypes.c_size_t]),
                        ("aligned_alloc", ctypes.c_void_p, [ctypes.c_size_t, ctypes.c_size_t]),
                        ("malloc_usable_size", ctypes.c_size_t, [ctypes.c_void_p])]:
  f = getattr(libc, name); f.restype = res; f.argtypes = args
lib = ctypes.CDLL(os.environ["LD_PRELOAD"].split()[0]) if os.environ.get("LD_PRELOAD") else None
MB = 1 << 20

def stats():
  out = (ctypes.c_uint64 * 4)()
  lib.regnet_block_cache_stats(out)
  return dict(zip(("live", "cached", "maps", "reuses"), out))

def fill(p, n, byte):
  ctypes.memset(p, byte, n)

def sample(p, n):  # bytes at the start, the middle and the end
  return ctypes.string_at(p, 64) + ctypes.string_at(p + n // 2, 64) + ctypes.string_at(p + n - 64, 64)
"""


@pytest.fixture(scope="module")
def library(tmp_path_factory):
  os.environ["REGNET_JAX_CACHE"] = str(tmp_path_factory.mktemp("cache"))
  try:
    lib = runtime.build_block_cache()
  finally:
    del os.environ["REGNET_JAX_CACHE"]
  assert lib is not None, "building regnet_jax/csrc/block_cache.c needs a C compiler (gcc)"
  return lib


def run_child(library, body, **env):
  code = PRELUDE + textwrap.dedent(body) + "\nprint('OK')\n"
  child_env = {k: v for k, v in os.environ.items() if not k.startswith("REGNET_JAX_BLOCK")}
  child_env.update(LD_PRELOAD=library, **env)
  proc = subprocess.run([sys.executable, "-c", code], env=child_env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout + proc.stderr


def test_a_freed_block_is_reused_and_small_ones_go_to_glibc(library):
  run_child(library, """
    p = libc.malloc(100 * MB)
    fill(p, 100 * MB, 7)
    assert libc.malloc_usable_size(p) >= 100 * MB
    libc.free(p)
    assert stats() == {"live": 0, "cached": 1, "maps": 1, "reuses": 0}, stats()
    q = libc.malloc(99 * MB)  # the same block: within 1/8 of its size
    assert q == p and stats()["reuses"] == 1
    small = libc.malloc(1000)
    assert small and libc.malloc_usable_size(small) >= 1000
    libc.free(small)
    libc.free(q)
    r = libc.malloc(20 * MB)  # far smaller: not pinned to the 100 MB block, and under 32 MB glibc's anyway
    assert r != p and stats()["maps"] == 1
    libc.free(r)
  """)


def test_calloc_zeroes_a_reused_block(library):
  run_child(library, """
    n = 64 * MB
    p = libc.malloc(n)
    fill(p, n, 0xAB)
    libc.free(p)
    q = libc.calloc(n // 8, 8)
    assert q == p and sample(q, n) == bytes(192)
    libc.free(q)
    assert libc.calloc(1 << 62, 1 << 62) is None  # overflow: NULL, not a small block
  """)


def test_a_block_freed_while_its_twin_is_live_is_unmapped(library):
  # The next step started before this one released its block: keep one block of that size, not two.
  run_child(library, """
    a, b = libc.malloc(80 * MB), libc.malloc(80 * MB)
    assert stats()["live"] == 2 and stats()["maps"] == 2
    libc.free(a)
    assert stats()["live"] == 1 and stats()["cached"] == 0
    libc.free(b)
    assert stats()["cached"] == 1
  """)


def test_at_most_block_cache_free_blocks_least_recently_freed_first(library):
  run_child(library, """
    sizes = (40 * MB, 50 * MB, 60 * MB)
    ptrs = [libc.malloc(n) for n in sizes]
    for p in ptrs:
      libc.free(p)
    assert stats()["cached"] == 2
    libc.free(libc.malloc(60 * MB)); libc.free(libc.malloc(50 * MB))
    assert stats()["maps"] == 3                  # both kept
    p = libc.malloc(40 * MB)
    assert stats()["maps"] == 4                  # the first freed was unmapped
    assert stats()["cached"] == 0                # and a miss unmaps the kept blocks of other sizes
    libc.free(p)
  """, REGNET_JAX_BLOCK_CACHE="2")
  run_child(library, """
    libc.free(libc.malloc(40 * MB))
    assert stats()["cached"] == 0
  """, REGNET_JAX_BLOCK_CACHE="0")


def test_realloc_and_aligned_allocation_keep_contents_and_alignment(library):
  run_child(library, """
    p = libc.malloc(1000)
    fill(p, 1000, 3)
    p = libc.realloc(p, 40 * MB)                 # glibc -> block
    assert ctypes.string_at(p, 1000) == bytes([3]) * 1000 and stats()["live"] == 1
    fill(p, 40 * MB, 4)
    p = libc.realloc(p, 90 * MB)                 # block -> bigger block
    assert ctypes.string_at(p + 40 * MB - 64, 64) == bytes([4]) * 64
    p = libc.realloc(p, 100)                     # block -> glibc
    assert ctypes.string_at(p, 100) == bytes([4]) * 100 and stats()["live"] == 0
    libc.free(p)
    out = ctypes.c_void_p()
    assert libc.posix_memalign(ctypes.byref(out), 4096, 50 * MB) == 0 and out.value % 4096 == 0
    assert stats()["live"] == 1
    libc.free(out.value)
    assert libc.posix_memalign(ctypes.byref(out), 3, 50 * MB) == 22  # EINVAL: not a power of two
    big_align = libc.aligned_alloc(8 * MB, 40 * MB)   # over 2 MiB alignment: glibc serves it
    assert big_align % (8 * MB) == 0
    libc.free(big_align)
  """)


def test_min_size_setting_fork_and_threads(library):
  run_child(library, """
    import threading
    p = libc.malloc(10 * MB)
    assert stats()["live"] == 1                   # 8 MB threshold
    libc.free(p)
    pid = os.fork()
    if pid == 0:                                  # the child can allocate: the lock is not left held
      q = libc.malloc(30 * MB); fill(q, 30 * MB, 1); libc.free(q); os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    def churn(seed):
      for i in range(200):
        n = (9 + (seed * 7 + i) % 5) * MB
        q = libc.malloc(n); fill(q, 4096, seed); assert ctypes.string_at(q, 1) == bytes([seed]); libc.free(q)
    threads = [threading.Thread(target=churn, args=(s,)) for s in range(4)]
    [t.start() for t in threads]; [t.join() for t in threads]
    assert stats()["live"] == 0 and stats()["cached"] <= 3
  """, REGNET_JAX_BLOCK_MIN_MB="8")


@pytest.mark.slow  # CI runs it (.ci/run: -m slow); the default suite stays near 10 minutes
def test_jax_computes_the_same_under_it(library, tmp_path):
  import numpy as np
  code = """
    import jax, jax.numpy as jnp, numpy as np
    x = jax.random.normal(jax.random.key(0), (2048, 4096))       # 32 MB arrays, temporaries over 32 MB
    f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(0) + jnp.sort(x, axis=0).mean(1)[:2048])
    for _ in range(3):
      y = np.asarray(f(x))
    np.save(os.environ["OUT"], y)
    if lib is not None:
      assert stats()["reuses"] > 0, stats()   # XLA's blocks came from the cache
  """
  run_child(library, code, OUT=str(tmp_path / "with.npy"), JAX_PLATFORMS="cpu")
  run_child("", code, OUT=str(tmp_path / "ref.npy"), JAX_PLATFORMS="cpu")   # glibc's allocator alone
  np.testing.assert_array_equal(np.load(tmp_path / "with.npy"), np.load(tmp_path / "ref.npy"))


def test_a_request_waits_for_the_live_block_its_predecessor_is_about_to_free(library):
  """The next step's request comes just before the last step's block is freed: it waits and takes that block
  instead of mapping a second one (both would count in the resident peak)."""
  run_child(library, """
    import threading, time
    lib.regnet_block_cache_waits.restype = ctypes.c_uint64
    p = libc.malloc(100 * MB)
    t = threading.Thread(target=lambda: (time.sleep(0.002), libc.free(p)))
    t.start()
    q = libc.malloc(100 * MB)  # ctypes drops the GIL: the thread frees p while this call waits
    t.join()
    assert q == p and stats()["maps"] == 1 and lib.regnet_block_cache_waits() == 1, stats()
    libc.free(q)
  """)


def test_a_size_whose_wait_ran_out_is_not_waited_for_again(library):
  """A program that really holds two blocks of one size: the first wait runs out (~10 ms) and maps a block; the
  next requests of that size do not wait."""
  run_child(library, """
    import time
    lib.regnet_block_cache_waits.restype = ctypes.c_uint64
    a = libc.malloc(100 * MB)
    t = time.perf_counter(); b = libc.malloc(100 * MB); first = time.perf_counter() - t
    t = time.perf_counter(); c = libc.malloc(100 * MB); second = time.perf_counter() - t
    assert len({a, b, c}) == 3 and stats()["maps"] == 3 and lib.regnet_block_cache_waits() == 0, stats()
    assert first >= 0.009 and second < first / 2, (first, second)
    for p in (a, b, c):
      libc.free(p)
  """)

"""Process set-up for the command-line entry points (main, bench, sweep), done before JAX starts.

Huge pages for XLA:CPU's per-step buffers. XLA:CPU allocates all temporaries of one execution of a compiled step
as one block (929 MB for the d2l RegNetX32 train step at batch 128), which glibc serves with a fresh mmap every
step; the first touch of each 4 KiB page then faults and the kernel zeroes it: 240,000 page faults and 0.3-0.4 s
of kernel time per step, about as much as the step's own compute on 2 cores. glibc's `glibc.malloc.hugetlb=1`
tunable makes malloc ask for transparent huge pages (madvise) on its mmaps: ~850 faults per step, 1.9x faster
steps (measured, see README "Performance"). glibc reads tunables only at process start, so the entry point
re-executes itself once with GLIBC_TUNABLES extended; the process keeps its PID, so launchers and signal
handling are unaffected. Nothing happens off Linux/glibc, where THP is off ("[never]"), when the tunable is
already set, or with REGNET_JAX_THP=0.

Keeping freed memory (`REGNET_JAX_MALLOC`). Even with huge pages, a fresh mmap per step means the kernel zeroes
every page of the step's temporaries again (600-800 huge-page faults per regnetx32 step). With
`glibc.malloc.mmap_max=0` (big blocks come from the heap), an unbounded `trim_threshold` (freed heap is not handed
back) and `arena_max=1` (XLA's worker threads allocate from that same heap) the block is reused: ~20-50 faults
per step instead of 600-800, the regnetx32 train step 5-8% faster in the benchmark and the 2-epoch Fashion-MNIST
job 8% faster end to end (measured, see README "Performance"), for a resident size that stays at its peak: 5.1 GB
instead of 1.4 GB for that job (the train and eval steps' blocks and the heap's fragmentation).
`REGNET_JAX_MALLOC=retain` always does this, `system` never, `auto` (the default) only where JAX will run on the
CPU (JAX_PLATFORMS=cpu, or unset on a machine with no NVIDIA GPU or TPU device nodes) and the machine has at least
16 GiB of memory: on accelerator hosts the big buffers live on the device and one malloc arena could slow a
threaded input pipeline; on a small laptop the extra resident gigabytes cost more than 8% of speed.
"""
from __future__ import annotations

import glob
import os
import platform
import sys

HUGETLB_TUNABLE = "glibc.malloc.hugetlb=1"
RETAIN_TUNABLES = ("glibc.malloc.mmap_max=0", f"glibc.malloc.trim_threshold={1 << 40}", "glibc.malloc.arena_max=1")
MALLOC_MODES = ("auto", "retain", "system")
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
ACCELERATOR_NODES = ("/dev/nvidia[0-9]*", "/dev/accel[0-9]*", "/dev/vfio/[0-9]*")
RETAIN_MIN_MEMORY = 16 << 30


def runs_on_cpu(environ: dict[str, str], *, accelerator_nodes: bool) -> bool:
  """Whether JAX will compute on the CPU, guessed before JAX is imported."""
  platforms = environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return not accelerator_nodes


def malloc_tunables_env(environ: dict[str, str], *, thp_mode: str | None, libc: str,
                        accelerator_nodes: bool = False, memory_bytes: int = RETAIN_MIN_MEMORY
                        ) -> dict[str, str] | None:
  """The environment to re-execute with, or None when nothing should change (see the module docstring)."""
  mode = environ.get("REGNET_JAX_MALLOC", "auto") or "auto"
  if mode not in MALLOC_MODES:
    raise ValueError(f"REGNET_JAX_MALLOC={mode!r} is not one of {', '.join(MALLOC_MODES)}; unset it for auto")
  if libc != "glibc":
    return None
  want = []
  if environ.get("REGNET_JAX_THP", "1") != "0" and thp_mode is not None and "[never]" not in thp_mode:
    want.append(HUGETLB_TUNABLE)
  if mode == "retain" or (mode == "auto" and memory_bytes >= RETAIN_MIN_MEMORY
                          and runs_on_cpu(environ, accelerator_nodes=accelerator_nodes)):
    want.extend(RETAIN_TUNABLES)
  tunables = environ.get("GLIBC_TUNABLES", "")
  # A tunable the user set (to any value) is left alone; so are ours after the re-exec, so there is no exec loop.
  present = {part.split("=")[0] for part in tunables.split(":")}
  missing = [t for t in want if t.split("=")[0] not in present]
  if not missing:
    return None
  return dict(environ, GLIBC_TUNABLES=":".join([tunables] + missing if tunables else missing))


def reexec_with_malloc_tunables() -> None:
  """Re-executes this process once with the glibc malloc tunables it lacks (see the module docstring)."""
  if sys.platform != "linux" or not getattr(sys, "orig_argv", None):
    return
  try:
    with open(THP_MODE_FILE) as f:
      mode = f.read()
  except OSError:
    mode = None
  nodes = any(glob.glob(pattern) for pattern in ACCELERATOR_NODES)
  try:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError):
    memory = 0
  env = malloc_tunables_env(dict(os.environ), thp_mode=mode, libc=platform.libc_ver()[0], accelerator_nodes=nodes,
                            memory_bytes=memory)
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)


def cache_root() -> str:
  """The directory regnet_jax caches in (the oneDNN extension, the sweeps' XLA compilation cache):
  $REGNET_JAX_CACHE, else $XDG_CACHE_HOME/regnet_jax, else ~/.cache/regnet_jax."""
  root = os.environ.get("REGNET_JAX_CACHE")
  if not root:
    root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "regnet_jax")
  return root


def cpu_description() -> str:
  """Machine, CPU model and instruction-set flags. Native code (the oneDNN extension's -march=native, XLA:CPU's
  compiled programs) is built for the host's CPU, so a cache shared by unlike hosts (a shared $HOME) must be keyed
  by this."""
  try:
    with open("/proc/cpuinfo") as f:
      lines = [line for line in f if line.startswith(("model name", "flags", "Features", "CPU part"))]
    return platform.machine() + "".join(sorted(set(lines)))
  except OSError:
    return platform.machine() + platform.processor()

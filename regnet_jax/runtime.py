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

Keeping freed big blocks (`REGNET_JAX_MALLOC`). Even with huge pages, a fresh mmap per step means the kernel
zeroes every page of the step's temporaries again (~500 huge-page faults per regnetx32 step, 10-15% of the step).
- `blocks` (what `auto` picks where JAX runs on the CPU: JAX_PLATFORMS=cpu, or unset on a machine with no NVIDIA
  GPU or TPU device nodes): LD_PRELOAD of regnet_jax/csrc/block_cache.c, built here with the C compiler once per
  source and CPU, which keeps freed blocks of >= 32 MB mapped and hands them to the next step; smaller blocks go to
  glibc unchanged. The step is as fast as with `retain` and the resident size stays that of `system` (regnetx32
  b128 96 px: 1.07-1.09 GB against 2.2-2.9 GB; measured, see README "Performance").
- `retain`: glibc alone keeps freed memory: `glibc.malloc.mmap_max=0` (big blocks come from the heap), an unbounded
  `trim_threshold` and `arena_max=1` (XLA's worker threads allocate from that same heap). As fast, but the heap
  fragments around the reused block: 2.2-2.9 GB resident for that step, 5.1 GB for the 2-epoch Fashion-MNIST job.
  `auto` falls back to it where the library cannot be built (no C compiler) or the user preloads another library
  (LD_PRELOAD set: their allocator wins), on machines with >= 16 GiB.
- `system`: glibc's defaults (plus huge pages).
On accelerator hosts the big buffers live on the device, so `auto` changes nothing there but huge pages.
"""
from __future__ import annotations

import glob
import os
import platform
import sys

HUGETLB_TUNABLE = "glibc.malloc.hugetlb=1"
RETAIN_TUNABLES = ("glibc.malloc.mmap_max=0", f"glibc.malloc.trim_threshold={1 << 40}", "glibc.malloc.arena_max=1")
MALLOC_MODES = ("auto", "blocks", "retain", "system")
BLOCK_CACHE_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "block_cache.c")
BLOCK_CACHE_NAME = "libregnet_block_cache.so"
BLOCK_CACHE_SETTINGS = {"REGNET_JAX_BLOCK_MIN_MB": "the smallest block kept, in MB, default 32",
                        "REGNET_JAX_BLOCK_CACHE": "how many free blocks are kept, default 3; 0 keeps none"}
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
ACCELERATOR_NODES = ("/dev/nvidia[0-9]*", "/dev/accel[0-9]*", "/dev/vfio/[0-9]*")
RETAIN_MIN_MEMORY = 16 << 30


def runs_on_cpu(environ: dict[str, str], *, accelerator_nodes: bool) -> bool:
  """Whether JAX will compute on the CPU, guessed before JAX is imported."""
  platforms = environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return not accelerator_nodes


def allocator_env(environ: dict[str, str], *, thp_mode: str | None, libc: str, accelerator_nodes: bool = False,
                  memory_bytes: int = RETAIN_MIN_MEMORY, block_cache: str | None = None) -> dict[str, str] | None:
  """The environment to re-execute with, or None when nothing should change (see the module docstring).
  `block_cache` is the path of the built block-cache library, None where it could not be built."""
  mode = environ.get("REGNET_JAX_MALLOC", "auto") or "auto"
  if mode not in MALLOC_MODES:
    raise ValueError(f"REGNET_JAX_MALLOC={mode!r} is not one of {', '.join(MALLOC_MODES)}; unset it for auto")
  for name in BLOCK_CACHE_SETTINGS:
    value = environ.get(name, "")
    if value and not (value.isdigit() and (int(value) > 0 or name == "REGNET_JAX_BLOCK_CACHE")):
      raise ValueError(f"{name}={value!r} is not a {'non-negative' if name == 'REGNET_JAX_BLOCK_CACHE' else 'positive'}"
                       f" integer ({BLOCK_CACHE_SETTINGS[name]}); unset it for the default")
  if libc != "glibc":
    return None
  preload = environ.get("LD_PRELOAD", "")
  if mode == "blocks" and block_cache is None:
    raise ValueError("REGNET_JAX_MALLOC=blocks, but the block-cache library could not be built (needs a C "
                     "compiler, $CC or cc/gcc); install one (e.g. `apt-get install gcc`) or use "
                     "REGNET_JAX_MALLOC=retain or system")
  if mode == "auto":
    on_cpu = runs_on_cpu(environ, accelerator_nodes=accelerator_nodes)
    if not on_cpu:
      mode = "system"
    elif block_cache is not None and (not preload or block_cache in preload.split()):
      mode = "blocks"
    else:
      mode = "retain" if memory_bytes >= RETAIN_MIN_MEMORY else "system"
  want = []
  if environ.get("REGNET_JAX_THP", "1") != "0" and thp_mode is not None and "[never]" not in thp_mode:
    want.append(HUGETLB_TUNABLE)
  if mode == "retain":
    want.extend(RETAIN_TUNABLES)
  tunables = environ.get("GLIBC_TUNABLES", "")
  # A tunable the user set (to any value) is left alone; so are ours after the re-exec, so there is no exec loop.
  present = {part.split("=")[0] for part in tunables.split(":")}
  missing = [t for t in want if t.split("=")[0] not in present]
  env = dict(environ)
  if missing:
    env["GLIBC_TUNABLES"] = ":".join([tunables] + missing if tunables else missing)
  if mode == "blocks" and block_cache not in preload.split():
    # First, so that its malloc is the one every library binds to.
    env["LD_PRELOAD"] = f"{block_cache} {preload}".strip()
  return env if env != environ else None


def stock_env(environ: dict[str, str]) -> dict[str, str]:
  """`environ` without what allocator_env adds: the block cache out of LD_PRELOAD and our glibc tunables out of
  GLIBC_TUNABLES; what a program not started by regnet_jax runs with (bench's PyTorch reference, --torch-env)."""
  env = dict(environ)
  preload = [p for p in environ.get("LD_PRELOAD", "").split() if os.path.basename(p) != BLOCK_CACHE_NAME]
  tunables = [t for t in environ.get("GLIBC_TUNABLES", "").split(":")
              if t and t not in (HUGETLB_TUNABLE, *RETAIN_TUNABLES)]
  for name, parts, sep in (("LD_PRELOAD", preload, " "), ("GLIBC_TUNABLES", tunables, ":")):
    if parts:
      env[name] = sep.join(parts)
    else:
      env.pop(name, None)
  return env


def build_block_cache() -> str | None:
  """Compiles regnet_jax/csrc/block_cache.c once per source, compiler and CPU into the cache directory; its path,
  or None where there is no C compiler or the build fails (then `auto` uses glibc alone)."""
  import hashlib
  import shutil
  import subprocess
  import tempfile
  cc = os.environ.get("CC") or next((c for c in ("cc", "gcc") if shutil.which(c)), None)
  if cc is None or shutil.which(cc) is None:
    return None
  try:
    with open(BLOCK_CACHE_SOURCE, "rb") as f:
      source = f.read()
  except OSError:
    return None
  key = hashlib.sha256(source + cc.encode() + cpu_description().encode()).hexdigest()[:16]
  out = os.path.join(cache_root(), f"block_cache-{key}", BLOCK_CACHE_NAME)
  if os.path.exists(out):
    return out
  try:
    os.makedirs(os.path.dirname(out), exist_ok=True)
    # A temporary name, then a rename: concurrent builders never preload a half-written library.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(out))
    os.close(fd)
    proc = subprocess.run([cc, "-O2", "-shared", "-fPIC", BLOCK_CACHE_SOURCE, "-o", tmp, "-lpthread", "-ldl"],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode:
      os.unlink(tmp)
      print(f"note: building {BLOCK_CACHE_SOURCE} failed, using glibc's allocator alone:\n{proc.stderr[-2000:]}",
            file=sys.stderr)
      return None
    os.replace(tmp, out)
  except (OSError, subprocess.SubprocessError) as e:
    print(f"note: could not build the block cache ({e}); using glibc's allocator alone", file=sys.stderr)
    return None
  return out


def reexec_with_allocator() -> None:
  """Re-executes this process once with the allocator settings it lacks (see the module docstring)."""
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
  libc = platform.libc_ver()[0]
  mode_asked = os.environ.get("REGNET_JAX_MALLOC", "auto") or "auto"
  # Built only where it can be used: not on accelerator hosts, where auto leaves malloc to glibc.
  wants_blocks = mode_asked == "blocks" or (mode_asked == "auto"
                                            and runs_on_cpu(dict(os.environ), accelerator_nodes=nodes))
  block_cache = build_block_cache() if libc == "glibc" and wants_blocks else None
  env = allocator_env(dict(os.environ), thp_mode=mode, libc=libc, accelerator_nodes=nodes, memory_bytes=memory,
                      block_cache=block_cache)
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

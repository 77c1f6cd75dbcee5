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
"""
from __future__ import annotations

import os
import platform
import sys

HUGETLB_TUNABLE = "glibc.malloc.hugetlb=1"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_tunable_env(environ: dict[str, str], *, thp_mode: str | None, libc: str) -> dict[str, str] | None:
  """The environment to re-execute with, or None when nothing should change."""
  if environ.get("REGNET_JAX_THP", "1") == "0" or libc != "glibc":
    return None
  if thp_mode is None or "[never]" in thp_mode:
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if "glibc.malloc.hugetlb" in tunables:
    return None
  return dict(environ, GLIBC_TUNABLES=f"{tunables}:{HUGETLB_TUNABLE}" if tunables else HUGETLB_TUNABLE)


def reexec_with_huge_pages() -> None:
  """Re-executes this process with the glibc huge-page tunable if it is missing (see the module docstring)."""
  if sys.platform != "linux" or not getattr(sys, "orig_argv", None):
    return
  try:
    with open(THP_MODE_FILE) as f:
      mode = f.read()
  except OSError:
    mode = None
  env = thp_tunable_env(dict(os.environ), thp_mode=mode, libc=platform.libc_ver()[0])
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)

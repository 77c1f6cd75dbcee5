"""Multi-process start-up: `jax.distributed.initialize` when the launcher says this is one of several processes.

TPU VMs and SLURM are detected by JAX itself (`REGNET_DISTRIBUTED=auto`); `launch/local.sh` sets the coordinator
address, process count and id explicitly. A single process needs nothing.
"""

from __future__ import annotations

import os

import jax
from absl import logging


def initialize_from_env(environ=os.environ) -> None:
  mode = environ.get("REGNET_DISTRIBUTED", "")
  if not mode:
    return
  if mode == "auto":  # TPU pod slices, SLURM, Open MPI: JAX reads the cluster environment
    jax.distributed.initialize()
  elif mode == "explicit":
    try:
      address = environ["REGNET_COORDINATOR"]
      count, pid = int(environ["REGNET_NUM_PROCESSES"]), int(environ["REGNET_PROCESS_ID"])
    except (KeyError, ValueError) as e:
      raise ValueError("REGNET_DISTRIBUTED=explicit needs REGNET_COORDINATOR=host:port, REGNET_NUM_PROCESSES=N "
                       f"and REGNET_PROCESS_ID=i ({e})") from e
    jax.distributed.initialize(coordinator_address=address, num_processes=count, process_id=pid)
  else:
    raise ValueError(f"REGNET_DISTRIBUTED={mode!r}; use 'auto' (TPU/SLURM) or 'explicit' (launch/local.sh)")
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())

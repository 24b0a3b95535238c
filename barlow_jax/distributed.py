"""Joining a multi-process run: TPU pods, multi-node GPU, or several CPU processes on one machine.

Where the processes learn who they are, in order:
1. explicit values (`main.py`'s `--coordinator_address`, `--num_processes`, `--process_id`);
2. the environment: `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` (what
   `barlow_jax.launch` sets, and what a hand-written launcher can set);
3. jax's own cluster detection (Cloud TPU pods, SLURM, Open MPI), which needs no arguments.
A single process on one host joins nothing.
"""

import logging
import os

import jax

_ENV_ADDRESS = "JAX_COORDINATOR_ADDRESS"
_ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
_ENV_PROCESS_ID = "JAX_PROCESS_ID"
# Process counts by which jax's cluster detection recognises a multi-process job.
_CLUSTER_SIZES = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def _env_int(name: str) -> int | None:
  value = os.environ.get(name, "")
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"environment variable {name}={value!r} must be an integer") from None


def _on_multihost_tpu() -> bool:
  hostnames = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return len([h for h in hostnames.split(",") if h]) > 1


def initialize(
  coordinator_address: str = "",
  num_processes: int = 0,
  process_id: int = -1,
  *,
  cluster_detection: bool = False,
  heartbeat_timeout_seconds: int = 60,
) -> bool:
  """Calls `jax.distributed.initialize` when this is a multi-process run; returns whether it did.

  Args:
    coordinator_address: "host:port" of process 0's coordination service ("" = from environment).
    num_processes: total number of processes (0 = from environment).
    process_id: this process's index (-1 = from environment).
    cluster_detection: join with jax's own cluster detection even where no environment variable
      above says this is a multi-host job (`main.py --distributed`: Cloud TPU VM pods, whose
      hosts jax finds through the TPU metadata).
    heartbeat_timeout_seconds: how long the survivors wait for a silent process before failing
      with an error that names it, instead of hanging in a collective. Measured on CPU/gloo over
      loopback (2 processes): when process 1 is SIGKILLed, process 0 (which hosts the
      coordination service) aborts (SIGABRT) about this many seconds later with "The following
      tasks are unhealthy (stopped sending heartbeats): 1"; when process 0 dies, the others fail
      at once (their next collective reads "Connection reset by peer"). `barlow_jax.launch`
      kills the survivors sooner (`--grace_s`).
  """
  address = coordinator_address or os.environ.get(_ENV_ADDRESS, "")
  count = num_processes or _env_int(_ENV_NUM_PROCESSES) or 0
  index = process_id if process_id >= 0 else _env_int(_ENV_PROCESS_ID)
  if address or count > 1:
    if not (address and count and index is not None):
      raise ValueError(
        "a multi-process run needs all three of --coordinator_address, --num_processes and "
        f"--process_id (or {_ENV_ADDRESS}, {_ENV_NUM_PROCESSES}, {_ENV_PROCESS_ID}); got "
        f"address={address!r}, num_processes={count}, process_id={index}"
      )
    if not 0 <= index < count:
      raise ValueError(f"--process_id={index} must be in [0, --num_processes={count})")
    if jax.config.jax_platforms in ("cpu",) or os.environ.get("JAX_PLATFORMS") == "cpu":
      # CPU devices of several processes talk through gloo; the default is no collectives at all.
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    logging.info("Joining %d processes at %s as process %d.", count, address, index)
    jax.distributed.initialize(
      coordinator_address=address,
      num_processes=count,
      process_id=index,
      heartbeat_timeout_seconds=heartbeat_timeout_seconds,
    )
    return True
  if (
    cluster_detection
    or _on_multihost_tpu()
    or any((_env_int(name) or 1) > 1 for name in _CLUSTER_SIZES)
  ):
    logging.info("Multi-host environment detected; joining with jax's cluster detection.")
    jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout_seconds)
    return True
  return False

r"""Starts a multi-process run on this machine, joined over loopback, as a pod would run it.

    python -m barlow_jax.launch --num_processes=2 --devices_per_process=4 -- \
        --config=configs/digits.py --workdir=workdirs/digits_2proc

Each process runs `python -m barlow_jax.main` with the arguments after `--`, sees its own
`--devices_per_process` devices (emulated CPU devices, or its own GPUs with `--platform=gpu`), and
joins the others through `JAX_COORDINATOR_ADDRESS` / `JAX_NUM_PROCESSES` / `JAX_PROCESS_ID`.
Their output is streamed with a `[pN]` prefix.

Failure handling: when a process exits with an error or is killed, the launcher names it, gives the
survivors `--grace_s` seconds to stop on their own (they are usually blocked in a collective with
the lost process), then kills them, and exits non-zero. The last complete checkpoint stays valid
(orbax commits a checkpoint atomically), so running the same command again resumes from it.
SIGTERM or Ctrl-C to the launcher is forwarded to every process as SIGTERM: the preemption path,
where they agree on a step, save it and exit cleanly.

Joining (`initialize`, which every process of a multi-process run calls first: `main.py` does).
Where the processes learn who they are, in order:
1. explicit values (`main.py`'s `--coordinator_address`, `--num_processes`, `--process_id`);
2. the environment: `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` (what this
   launcher sets, and what a hand-written launcher can set);
3. jax's own cluster detection (Cloud TPU pods, SLURM, Open MPI), which needs no arguments.
A single process on one host joins nothing. The launcher itself imports no jax.
"""

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import flags

from barlow_jax import cli

_ENV_ADDRESS = "JAX_COORDINATOR_ADDRESS"
_ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
_ENV_PROCESS_ID = "JAX_PROCESS_ID"
# Process counts by which jax's cluster detection recognises a multi-process job.
_CLUSTER_SIZES = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def _describe_exit(returncode: int) -> str:
  if returncode < 0:
    try:
      return f"was killed by {signal.Signals(-returncode).name}"
    except ValueError:
      return f"was killed by signal {-returncode}"
  return f"exited with status {returncode}"


def _process_env(args, index: int, address: str) -> dict[str, str]:
  env = dict(os.environ)
  env[_ENV_ADDRESS] = address
  env[_ENV_NUM_PROCESSES] = str(args.num_processes)
  env[_ENV_PROCESS_ID] = str(index)
  env["PYTHONUNBUFFERED"] = "1"
  if args.platform == "cpu":
    xla_flags = [
      f
      for f in env.get("XLA_FLAGS", "").split()
      if not f.startswith("--xla_force_host_platform_device_count")
    ]
    xla_flags.append(f"--xla_force_host_platform_device_count={args.devices_per_process}")
    env["XLA_FLAGS"] = " ".join(xla_flags)
    env["JAX_PLATFORMS"] = "cpu"
  else:
    first = index * args.devices_per_process
    ids = range(first, first + args.devices_per_process)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in ids)
  return env


def _stream(prefix: str, pipe, lock: threading.Lock) -> None:
  for line in iter(pipe.readline, ""):
    with lock:
      sys.stdout.write(f"{prefix} {line}")
      sys.stdout.flush()
  pipe.close()


def _watch(procs: list, grace_s: float) -> int:
  """Polls until every process has ended; after the first failure the others get `grace_s`
  seconds, then are killed. Returns 1 if a process failed, else 0."""
  failed_at, status = None, 0
  while any(p.poll() is None for p in procs):
    for index, proc in enumerate(procs):
      code = proc.poll()
      if code not in (None, 0) and failed_at is None:
        failed_at, status = time.monotonic(), 1
        print(
          f"launch: process {index} (pid {proc.pid}) {_describe_exit(code)}; the others are "
          f"given {grace_s:g}s to stop, then killed",
          flush=True,
        )
    if failed_at is not None and time.monotonic() - failed_at > grace_s:
      for index, proc in enumerate(procs):
        if proc.poll() is None:
          print(f"launch: killing process {index} (pid {proc.pid})", flush=True)
          proc.kill()
    time.sleep(0.2)
  return status


def launch(args, program_args: list[str]) -> int:
  """Runs the processes to completion; returns 0 only if every one of them succeeded.

  `args` has the flags' values as attributes (`num_processes`, `devices_per_process`,
  `platform`, `port`, `grace_s`, `module`): the parsed flags or any namespace.
  """
  address = f"127.0.0.1:{args.port or _free_port()}"
  command = [sys.executable, "-m", args.module, *program_args]
  lock = threading.Lock()
  procs, streams = [], []
  for index in range(args.num_processes):
    proc = subprocess.Popen(
      command,
      env=_process_env(args, index, address),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      start_new_session=True,  # Our own Ctrl-C handling decides what the children get.
    )
    procs.append(proc)
    thread = threading.Thread(target=_stream, args=(f"[p{index}]", proc.stdout, lock), daemon=True)
    thread.start()
    streams.append(thread)
  print(
    f"launch: {args.num_processes} processes x {args.devices_per_process} {args.platform} "
    f"devices, coordinator {address}, pids {[p.pid for p in procs]}",
    flush=True,
  )

  def forward_sigterm(signum, frame):
    del frame
    print(f"launch: got {signal.Signals(signum).name}; forwarding SIGTERM", flush=True)
    for proc in procs:
      if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)

  previous = {s: signal.signal(s, forward_sigterm) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    status = _watch(procs, args.grace_s)
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  for thread in streams:
    thread.join(timeout=5)
  for index, proc in enumerate(procs):
    if proc.returncode != 0:
      status = 1
      print(f"launch: process {index} {_describe_exit(proc.returncode)}", flush=True)
  return status


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
      at once (their next collective reads "Connection reset by peer"). the launcher
      kills the survivors sooner (`--grace_s`).
  """
  import jax

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


def define_flags(flag_values: flags.FlagValues) -> None:
  """The launcher's own flags (`barlow_jax.cli.Command`); the program's follow `--`."""
  fv = {"flag_values": flag_values}
  flags.DEFINE_integer("num_processes", 2, "processes to start", lower_bound=1, **fv)
  flags.DEFINE_integer("devices_per_process", 4, "devices each process sees", lower_bound=1, **fv)
  flags.DEFINE_enum("platform", "cpu", ("cpu", "gpu"), "emulated CPU devices or GPUs", **fv)
  flags.DEFINE_integer("port", 0, "coordinator port; 0 picks a free one", **fv)
  flags.DEFINE_float("grace_s", 20.0, "seconds survivors get after a failure", **fv)
  flags.DEFINE_string("module", "barlow_jax.main", "python module each runs", **fv)


def _command(flag_values: flags.FlagValues, argv: list[str]) -> int:
  # absl leaves what follows `--` (the program's arguments) in argv.
  return launch(flag_values, argv[1:])


COMMAND = cli.Command("python -m barlow_jax.launch", define_flags, _command, __doc__)


def main(argv: list[str] | None = None) -> int:
  """The command line in-process: `argv` without the program name (default `sys.argv[1:]`)."""
  return COMMAND(["", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
  COMMAND.run()

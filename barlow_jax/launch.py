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
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import flags

from barlow_jax import cli


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
  env["JAX_COORDINATOR_ADDRESS"] = address
  env["JAX_NUM_PROCESSES"] = str(args.num_processes)
  env["JAX_PROCESS_ID"] = str(index)
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

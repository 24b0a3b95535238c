r"""The accelerator suite: one command that measures the accelerator table of docs/benchmarks.md.

    PYTHONUNBUFFERED=1 python -m barlow_jax.benchmark suite --out_dir=$OUT            # GPU / TPU
    PYTHONUNBUFFERED=1 python -m barlow_jax.benchmark suite --tiny --out_dir=/tmp/s   # CPU check

Parts, in this order, each a subprocess with its own time limit (a part that fails or runs
out of time is reported and the rest still run), all inside `--budget` seconds:

1. `step`: the JAX step, ResNet-50 + 8192-8192-8192, bf16, 224 px, device batch 256 of uint8 views
   (host augmentations: the views arrive augmented), with the PyTorch peers on the same device
   (the reference's fp16 autocast + GradScaler step, and the tuned bf16 channels-last one).
2. `step_on_device`: the same JAX step with `config.augment.on_device=True` (skipped with a note
   where `barlow_jax.data.device_augment` is not in the checkout); its share of the step's time and
   FLOPs against part 1. It leaves `LOSS_RESERVE` seconds of the budget to part 3.
3. `loss`: loss + gradient, `auto` against the PyTorch formula, at N=2048, D=8192 and at N=512,
   D=65536 (`python -m barlow_jax.benchmark loss`, device-synchronised medians).
4. `torch_compiled`: the tuned PyTorch step under `torch.compile`, only if the budget has room.

Between 2 and 3, `profile`: the part-1 JAX step traced with `jax.profiler` and its time summed by
op class (`barlow_jax.benchmarks.profile`): profile.json, profile.md and the trace under
`--out_dir`/profile.

Writes to `--out_dir`: suite.log (every part's output as it runs), suite.json (every result) and
suite.md (the tables, also printed last). Needs neither TensorFlow nor clu.
"""

import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types

from absl import app, flags

from barlow_jax import cli
from barlow_jax.benchmarks import loss as loss_benchmark
from barlow_jax.benchmarks import profile

FULL = {
  "model": ["--backbone=ResNet50", "--projector=8192-8192-8192", "--width=1.0"],
  "shape": ["--batch=256", "--image_size=224", "--dtype=bfloat16"],
  "timing": ["--steps=20", "--warmup=5"],
  "loss": [(2048, 8192), (512, 65536)],
  "loss_repeats": 10,
  # The device's memory, not the host's (which a VM may report far lower than it can grow to):
  # the PyTorch formula at D=65536 builds C and its gradient, ~70 GB.
  "loss_max_bytes": 120e9,
}
TINY = {
  "model": ["--backbone=ResNet18", "--projector=32-32-32", "--width=0.125"],
  "shape": ["--batch=8", "--image_size=32", "--dtype=bfloat16"],
  "timing": ["--steps=3", "--warmup=1"],
  "loss": [(64, 256), (16, 1024)],
  "loss_repeats": 2,
  "loss_max_bytes": 2e9,
}
# Seconds each part may take at most (the remaining budget caps them further), and the least a
# part needs to be worth starting.
CAPS = {"step": 300, "loss": 120, "step_on_device": 200, "profile": 200, "torch_compiled": 200}
MIN_START = {"step": 30, "loss": 20, "step_on_device": 60, "profile": 60, "torch_compiled": 120}
# Where part 1 (JAX and PyTorch in one process) leaves no result, each alone, so that a clash of
# the two in one process loses neither.
CAPS |= {"step_jax_alone": 240, "torch_alone": 120}
MIN_START |= {"step_jax_alone": 60, "torch_alone": 30}
FALLBACKS = ("step_jax_alone", "torch_alone")
# Seconds of the budget kept for the two loss parts (after the on-device step part): each starts
# two processes, ~30-40 s together.
LOSS_RESERVE = 80.0
VERSIONS = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "ml_collections", "torch")


class SuiteLog:
  """Lines to stdout and to suite.log at once, flushed, so a killed run keeps what it printed."""

  def __init__(self, path: str):
    self._file = open(path, "a", buffering=1)  # noqa: SIM115 -- open for the whole suite.

  def __call__(self, line: str = "") -> None:
    print(line, flush=True)
    self._file.write(line + "\n")

  def close(self) -> None:
    self._file.close()


def _environment() -> dict:
  env = {
    "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
    "host": platform.node(),
    "host_cpus": os.cpu_count(),
    "python": platform.python_version(),
    "tensorflow_installed": importlib.util.find_spec("tensorflow") is not None,
  }
  for name in VERSIONS:
    try:
      env[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      env[name] = None
  if shutil.which("nvidia-smi"):
    query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
    try:
      env["gpu"] = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
      env["gpu"] = f"nvidia-smi failed: {e}"
  return env


def run_part(log: SuiteLog, name: str, cmd: list[str], timeout: float) -> dict:
  """Runs `cmd` with its output streamed into the log, killed after `timeout` s; never raises."""
  log(f"=== {name}: {' '.join(cmd)}  (limit {timeout:.0f} s)")
  start = time.perf_counter()
  proc = subprocess.Popen(
    cmd,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    env=dict(os.environ, PYTHONUNBUFFERED="1"),
    start_new_session=True,  # Its own process group: a timeout ends its children too.
  )

  def pump():
    for line in proc.stdout:
      log(f"[{name}] {line.rstrip()}")

  # A reader thread, so that a part that hangs without printing still meets its time limit.
  reader = threading.Thread(target=pump, daemon=True)
  reader.start()
  try:
    proc.wait(timeout=timeout)
    status = f"failed (exit {proc.returncode})" if proc.returncode else "ok"
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    status = f"timeout after {timeout:.0f} s"
  reader.join(timeout=10)
  seconds = time.perf_counter() - start
  log(f"=== {name}: {status} in {seconds:.0f} s")
  return {"status": status, "seconds": seconds}


def _load(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _fmt(x, spec: str, scale: float = 1.0) -> str:
  return "-" if x is None or x != x else format(x * scale, spec)


def markdown(results: dict) -> str:
  """The suite's tables (markdown) from its results dict."""
  env = results["environment"]
  step = results.get("step") or {}
  device = env.get("gpu") or step.get("device_kind", "unknown device")
  lines = [
    f"Device: {device}; {env['host_cpus']} host CPUs; jax {env['jax']}, flax {env['flax']}, "
    f"torch {env['torch']}; {env['date_utc']} UTC.",
    "",
  ]
  if step or _peers(results):
    lines += _step_table(step, results.get("step_on_device") or {}, _peers(results))
  if results.get("profile"):
    lines += [profile.markdown(results["profile"]), ""]
  loss_rows = [row for part in results.get("loss", []) for row in part.get("rows", [])]
  if loss_rows:
    lines += ["Loss + gradient (float32, median of device-synchronised calls):", ""]
    lines += [loss_benchmark.format_table(loss_rows), ""]
  status = ", ".join(f"{k}: {v['status']}" for k, v in results["parts"].items())
  lines.append(f"Parts: {status}.")
  return "\n".join(lines)


def _peers(results: dict) -> dict:
  """The PyTorch peer's variants by name (eager and torch.compile runs)."""
  step = results.get("step") or {}
  peers = {v["variant"]: v for v in (step.get("peer") or {}).get("variants", [])}
  for v in (results.get("torch_compiled") or {}).get("variants", []):
    peers[v["variant"]] = v
  return peers


def _step_table(step: dict, on_device: dict, peers: dict) -> list[str]:
  """The training-step table's lines: JAX (host / device augmentations) against the peers."""
  flops = step.get("flops_per_image_analytic")
  peak = step.get("peak_flops")
  lines = [
    f"Training step, {step.get('backbone', '?')} + {step.get('projector', '?')}, "
    f"batch {step.get('batch', '?')}, {step.get('image_size', '?')} px, device batch "
    f"(median of {step.get('steps', '?')} timed steps); "
    f"{_fmt(flops, '.2f', 1e-9)} GFLOPs per example (analytic, `barlow_jax.benchmarks.flops`; "
    f"XLA's cost analysis: {_fmt(step.get('flops_per_image'), '.2f', 1e-9)}); "
    f"MFU against {_fmt(peak, '.0f', 1e-12)} TFLOP/s dense bf16.",
    "",
    "| step | images/s | ms/step | MFU | JAX host-aug / this | note |",
    "|---|---|---|---|---|---|",
  ]
  jax_ips = step.get("device_images_per_second")
  rows = [("JAX, bf16, host augmentations", step, "")]
  if on_device.get("device_images_per_second"):
    rows.append(("JAX, bf16, `augment.on_device=True`", on_device, ""))
  for key, label in (
    ("reference", "PyTorch reference: fp16 autocast + GradScaler, LARS"),
    ("tuned", "PyTorch tuned: bf16 autocast, channels_last, foreach LARS"),
    ("tuned_compiled", "PyTorch tuned + torch.compile"),
  ):
    if key in peers:
      rows.append((label, peers[key], "peer"))
  for label, r, kind in rows:
    if "error" in r:
      lines.append(f"| {label} | - | - | - | - | failed: {r['error'][:120]} |")
      continue
    ips = r.get("images_per_second" if kind else "device_images_per_second")
    sec = r.get("step_seconds" if kind else "device_step_seconds")
    # The peers do the host-augmentation step's work.
    f = r.get("flops_per_image_analytic") or flops
    mfu = ips * f / peak if ips and f and peak else None
    ratio = jax_ips / ips if ips and jax_ips else None
    note = f"{r['skipped_steps']} updates skipped by GradScaler" if r.get("skipped_steps") else ""
    lines.append(
      f"| {label} | {_fmt(ips, '.0f')} | {_fmt(sec, '.1f', 1e3)} | {_fmt(mfu, '.1%')} | "
      f"{_fmt(ratio, '.2f')}x | {note} |"
    )
  if step.get("device_step_seconds") and on_device.get("device_step_seconds"):
    t_on, t_off = on_device["device_step_seconds"], step["device_step_seconds"]
    f_on, f_off = on_device["flops_per_image_analytic"], step["flops_per_image_analytic"]
    lines += [
      "",
      f"On-device augmentations: {(t_on - t_off) / t_on:.1%} of the step's time, "
      f"{(f_on - f_off) / f_on:.2%} of its FLOPs.",
    ]
  lines.append("")
  return lines


def define_flags(flag_values: flags.FlagValues) -> None:
  """The suite's flags (`barlow_jax.cli.Command`)."""
  fv = {"flag_values": flag_values}
  flags.DEFINE_string(
    "out_dir", os.environ.get("OUT", "suite_out"), "where the results go ($OUT by default)", **fv
  )
  flags.DEFINE_bool("tiny", False, "tiny shapes: a CPU check of the suite", **fv)
  flags.DEFINE_float("budget", 400.0, "seconds for all the parts", **fv)
  flags.DEFINE_multi_enum(
    "parts",
    None,
    [p for p in CAPS if p not in FALLBACKS],
    "which parts to run (default: all as the budget allows; with --tiny all but "
    "torch_compiled, whose CPU build takes minutes)",
    **fv,
  )


# Long: the parts in the docstring's order, each a few lines with its fallback, read top to bottom.
def _settings(flag_values: flags.FlagValues) -> types.SimpleNamespace:
  """The suite's flags as plain values, with the parts to run filled in."""
  fv = flag_values
  # The parts list grows below: plain values, not the parsed flags.
  args = types.SimpleNamespace(
    out_dir=fv.out_dir, tiny=fv.tiny, budget=fv.budget, parts=list(fv.parts or []) or None
  )
  if args.parts is None:
    args.parts = [
      p for p in CAPS if p not in FALLBACKS and not (args.tiny and p == "torch_compiled")
    ]
  if "step" in args.parts:
    args.parts += FALLBACKS
  return args


def _torch_sizes(sizes: dict) -> list[str]:
  # The peers' own flags: the same names, less --dtype (each variant has its autocast dtype).
  return [a for a in (*sizes["model"], *sizes["shape"], *sizes["timing"]) if "dtype" not in a]


def _step_parts(part, results: dict, sizes: dict, tmp: str, log) -> None:
  """The step benchmark (JAX and the PyTorch peers), its fallbacks, and the on-device step."""
  step_args = ["barlow_jax.benchmark", "step", *sizes["model"], *sizes["shape"], *sizes["timing"]]
  step_args += ["--input=device"]
  torch_sizes = _torch_sizes(sizes)
  path = os.path.join(tmp, "step.json")
  peer = ["--peer=torch", "--peer_variants", "reference", "tuned"]
  results["step"] = part("step", [*step_args, "--on_device=off", *peer, f"--out={path}"], path)
  if results["step"] is None and "step" in results["parts"]:
    log("=== step left no result: JAX and PyTorch again, each in its own process")
    path = os.path.join(tmp, "step_jax_alone.json")
    results["step"] = part("step_jax_alone", [*step_args, "--on_device=off", f"--out={path}"], path)
    path = os.path.join(tmp, "torch_alone.json")
    argv = ["barlow_jax.benchmarks.torch_peer", "--variants", "reference", "tuned"]
    argv += [f"--out={path}", *torch_sizes]
    peers = part("torch_alone", argv, path)
    if results["step"] is not None and peers is not None:
      results["step"]["peer"] = peers
    elif peers is not None:
      results["step"] = {"peer": peers}
  if importlib.util.find_spec("barlow_jax.data.device_augment") is None:
    results["parts"]["step_on_device"] = {
      "status": "skipped: barlow_jax.data.device_augment is not in this checkout"
    }
  else:
    path = os.path.join(tmp, "step_on_device.json")
    argv = [*step_args, "--on_device=on", f"--out={path}"]
    results["step_on_device"] = part("step_on_device", argv, path, reserve=LOSS_RESERVE)


def _profile_part(part, results: dict, sizes: dict, out_dir: str) -> None:
  """The step's trace, summarised by op class (`barlow_jax.benchmarks.profile`), in out_dir."""
  profile_dir = os.path.join(out_dir, "profile")
  argv = ["barlow_jax.benchmarks.profile", *sizes["model"], *sizes["shape"], "--steps=3"]
  argv += [f"--out_dir={profile_dir}"]
  results["profile"] = part(
    "profile", argv, os.path.join(profile_dir, "profile.json"), reserve=LOSS_RESERVE
  )


def _loss_parts(part, results: dict, sizes: dict, tmp: str) -> None:
  """The loss benchmark at each (N, D) of `sizes`."""
  for i, (n, d) in enumerate(sizes["loss"]):
    path = os.path.join(tmp, f"loss_{i}.json")
    loss_args = ["barlow_jax.benchmark", "loss", "--n", str(n), "--d", str(d), "--torch"]
    loss_args += ["--methods", "auto", "--repeats", str(sizes["loss_repeats"])]
    loss_args += ["--max-gflop", "1e6", "--max-bytes", str(sizes["loss_max_bytes"])]
    loss_args += ["--out", path]
    results["loss"].append(part("loss", loss_args, path) or {})
    results["parts"][f"loss N={n} D={d}"] = results["parts"].pop("loss", {"status": "not run"})


def _write_results(results: dict, out_dir: str, log, start: float) -> None:
  """suite.json, suite.md, and the table at the end of suite.log."""
  with open(os.path.join(out_dir, "suite.json"), "w") as f:
    json.dump(results, f, indent=1)
  try:
    table = markdown(results)
  except Exception as e:  # noqa: BLE001 -- suite.json and suite.log hold the results anyway.
    table = f"no table: {type(e).__name__}: {e} (the results are in suite.json)"
  with open(os.path.join(out_dir, "suite.md"), "w") as f:
    f.write(table + "\n")
  log(f"=== suite done in {time.perf_counter() - start:.0f} s; {out_dir}/suite.md:")
  log(table)
  log.close()


def _command(flag_values: flags.FlagValues, argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  args = _settings(flag_values)
  os.makedirs(args.out_dir, exist_ok=True)
  log = SuiteLog(os.path.join(args.out_dir, "suite.log"))
  sizes = TINY if args.tiny else FULL
  start = time.perf_counter()
  results = {"environment": _environment(), "parts": {}, "loss": []}
  log(json.dumps(results["environment"]))

  def remaining():
    return args.budget - (time.perf_counter() - start)

  def part(name, argv, out_path, reserve=0.0):
    limit = min(CAPS[name], remaining() - reserve)
    if name not in args.parts:
      return None
    if limit < MIN_START[name]:
      results["parts"][name] = {"status": f"not run: {remaining():.0f} s of budget left"}
      log(f"=== {name}: not run, {remaining():.0f} s of the budget left")
      return None
    results["parts"][name] = run_part(log, name, [sys.executable, "-m", *argv], limit)
    return _load(out_path)

  with tempfile.TemporaryDirectory() as tmp:
    _step_parts(part, results, sizes, tmp, log)
    _profile_part(part, results, sizes, args.out_dir)
    _loss_parts(part, results, sizes, tmp)
    path = os.path.join(tmp, "torch_compiled.json")
    argv = ["barlow_jax.benchmarks.torch_peer", "--variants", "tuned_compiled", f"--out={path}"]
    argv += _torch_sizes(sizes)
    results["torch_compiled"] = part("torch_compiled", argv, path)

  _write_results(results, args.out_dir, log, start)
  return 0


COMMAND = cli.Command("python -m barlow_jax.benchmark suite", define_flags, _command, __doc__)


def main(argv: list[str]) -> int:
  """The command line in-process: `argv[0]` is "suite", then the flags."""
  return COMMAND(argv)

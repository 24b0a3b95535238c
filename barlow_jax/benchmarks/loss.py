"""Loss + gradient benchmark: time and peak memory per method over an N x D grid.

    python -m barlow_jax.benchmark loss --n 256 1024 2048 --d 2048 8192 16384 32768 65536 \\
        --methods auto dense gram blockwise --repeats 3 --out loss_benchmark.json

Every (N, D, method) runs in a fresh subprocess, so that its peak memory is its own: on CPU the peak
resident set size of that process (`ru_maxrss`, which includes the ~0.3 GiB of the jax runtime
itself; the `base` column gives the RSS before the loss was compiled), on GPU/TPU the device's
`peak_bytes_in_use`. The time is the median wall time of one jitted `value_and_grad` of
`barlow_twins_loss` with respect to both views, after a warm-up call. With `--torch` (the default
when torch is importable), the reference formula in PyTorch runs as a side-by-side peer on the same
kind of device (`--torch-device`, CUDA when available; `torch.cuda.synchronize()` ends each timed
call): affine-free BatchNorm1d per view, `c = bn(z1).T @ bn(z2) / N`, on/off-diagonal sums,
`backward()`.

Configurations whose estimated memory exceeds `--max-bytes`, or whose estimated FLOPs exceed
`--max-gflop`, are skipped and listed as such (raise the limits on an accelerator).
"""

import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

from barlow_jax import benchmarks, cli

TORCH = "torch"


def _physical_memory_bytes() -> int:
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    return 16 << 30


def resolve_method(method: str, n: int, d: int) -> str:
  if method != "auto":
    return method
  from barlow_jax import losses

  return losses.choose_method("barlow_twins", n, d)


def estimate(method: str, n: int, d: int) -> tuple[float, float]:
  """(bytes, FLOPs) of one loss + gradient evaluation, rough upper estimates."""
  from barlow_jax import losses

  method = resolve_method(method, n, d)
  inputs = 10.0 * n * d * 4  # Views, normalised views, their gradients, temporaries.
  if method in ("dense", TORCH):
    return inputs + 4.0 * d * d * 4, 6.0 * n * d * d
  if method == "gram":
    return inputs + 4.0 * n * n * 4, 8.0 * n * n * d
  block = losses.default_block_size(d)
  return inputs + 4.0 * d * block * 4, 8.0 * n * d * d


def _rss_bytes() -> int:
  # Linux reports ru_maxrss in KiB, macOS in bytes.
  scale = 1 if sys.platform == "darwin" else 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _current_rss_bytes() -> int:
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  except OSError:
    return _rss_bytes()


def make_inputs(n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
  """The same correlated float32 views for every method and for torch, so losses can be compared."""
  rng = np.random.default_rng(0)
  z_a = rng.standard_normal((n, d), dtype=np.float32) * 2.0 + 1.0
  z_b = 0.5 * z_a + rng.standard_normal((n, d), dtype=np.float32)
  return z_a, z_b


def run_jax(method: str, n: int, d: int, repeats: int) -> dict:
  """One configuration in this process (call in a fresh subprocess)."""
  import jax
  import jax.numpy as jnp

  from barlow_jax import losses

  z_a, z_b = jax.block_until_ready(tuple(jnp.asarray(z) for z in make_inputs(n, d)))
  base = _current_rss_bytes()
  loss_fn = lambda a, b: losses.barlow_twins_loss(a, b, method=method)
  fn = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))
  start = time.perf_counter()
  compiled = fn.lower(z_a, z_b).compile()
  compile_s = time.perf_counter() - start
  loss, _ = jax.block_until_ready(compiled(z_a, z_b))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(z_a, z_b))
    times.append(time.perf_counter() - start)
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    peak, kind = stats["peak_bytes_in_use"], "device peak_bytes_in_use"
  else:
    peak, kind = _rss_bytes(), "process peak RSS"
  return {
    "median_s": statistics.median(times),
    "times_s": times,
    "compile_s": compile_s,
    "peak_bytes": peak,
    "base_bytes": base if kind == "process peak RSS" else 0,
    "memory_kind": kind,
    "loss": float(loss),
    "resolved_method": resolve_method(method, n, d),
    "device": device.device_kind,
  }


def run_torch(n: int, d: int, repeats: int, lambd: float = 0.0051, device: str = "auto") -> dict:
  """The reference formula in PyTorch (in a fresh subprocess), on `device` ('auto': CUDA if any).

  On CUDA every timed call ends with `torch.cuda.synchronize()` and the peak is the device's
  `max_memory_allocated`; matmuls run in full float32 (torch's default, no TF32), as the JAX
  methods' `precision=HIGHEST`.
  """
  import torch

  from barlow_jax.benchmarks import torch_peer

  if device == "auto":
    device = torch_peer.default_device()
  device = torch.device(device)
  z_a, z_b = (torch.from_numpy(z).to(device).requires_grad_(True) for z in make_inputs(n, d))
  bn = torch.nn.BatchNorm1d(d, affine=False).to(device)
  base = _current_rss_bytes()

  def step():
    z_a.grad = z_b.grad = None
    loss = torch_peer.barlow_twins_loss(z_a, z_b, bn, lambd, n)
    loss.backward()
    if device.type == "cuda":
      torch.cuda.synchronize(device)
    return loss

  loss = step()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  if device.type == "cuda":
    peak, base, kind = torch.cuda.max_memory_allocated(device), 0, "device max_memory_allocated"
    name = torch.cuda.get_device_name(device)
  else:
    peak, kind = _rss_bytes(), "process peak RSS"
    name = f"cpu, {torch.get_num_threads()} threads"
  return {
    "median_s": statistics.median(times),
    "times_s": times,
    "compile_s": 0.0,
    "peak_bytes": peak,
    "base_bytes": base,
    "memory_kind": kind,
    "loss": float(loss.detach()),
    "resolved_method": TORCH,
    "device": name,
  }


def _run_child(
  method: str, n: int, d: int, repeats: int, timeout: float, torch_device: str
) -> dict:
  cmd = [
    sys.executable,
    "-m",
    "barlow_jax.benchmark",
    "loss",
    "--child",
    method,
    str(n),
    str(d),
    "--repeats",
    str(repeats),
    "--torch-device",
    torch_device,
  ]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return {"status": f"timeout after {timeout:.0f} s"}
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith("{"):
      result = json.loads(line)
      result["status"] = "ok"
      return result
  tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
  return {"status": f"failed (exit {proc.returncode}): {tail[0][:200]}"}


def _fmt_bytes(x) -> str:
  return f"{x / 2**30:.2f}" if x else "-"


def format_table(rows: list[dict]) -> str:
  lines = [
    "| N | D | method | ran as | median ms | vs torch | peak GiB | base GiB | loss | note |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  torch_time = {(r["n"], r["d"]): r.get("median_s") for r in rows if r["method"] == TORCH}
  for r in rows:
    if r["status"] != "ok":
      lines.append(
        f"| {r['n']} | {r['d']} | {r['method']} | - | - | - | - | - | - | {r['status']} |"
      )
      continue
    ref = torch_time.get((r["n"], r["d"]))
    speedup = f"{ref / r['median_s']:.2f}x" if ref and r["method"] != TORCH else "-"
    lines.append(
      f"| {r['n']} | {r['d']} | {r['method']} | {r['resolved_method']} | "
      f"{1e3 * r['median_s']:.1f} | "
      f"{speedup} | {_fmt_bytes(r['peak_bytes'])} | {_fmt_bytes(r['base_bytes'])} | "
      f"{r['loss']:.6g} | |"
    )
  return "\n".join(lines)


def _torch_available() -> bool:
  try:
    import torch  # noqa: F401
  except ImportError:
    return False
  return True


def define_flags(flag_values: flags.FlagValues) -> None:
  """This benchmark's flags (`barlow_jax.cli.Command`)."""
  fv = {"flag_values": flag_values}
  flags.DEFINE_multi_integer("n", [256, 1024, 2048], "global batch", **fv)
  flags.DEFINE_multi_integer("d", [2048, 8192, 16384, 32768, 65536], "embedding dim", **fv)
  flags.DEFINE_multi_string("methods", ["auto", "dense", "gram", "blockwise"], "loss methods", **fv)
  benchmarks.define_shared_flags(
    flag_values,
    repeats=(3, "timed calls after a warm-up"),
    out=("loss_benchmark.json", "JSON results path"),
  )
  flags.DEFINE_bool(
    "torch",
    None,
    "run the PyTorch reference formula as a peer (default: when torch is importable)",
    **fv,
  )
  flags.DEFINE_float(
    "max_bytes",
    0.8 * _physical_memory_bytes(),
    "skip configurations estimated to need more memory (default 80% of physical memory)",
    **fv,
  )
  flags.DEFINE_float(
    "max_gflop",
    1000.0,
    "skip configurations estimated to need more GFLOP per loss + gradient",
    **fv,
  )
  flags.DEFINE_string(
    "torch_device", "auto", "device of the torch peer ('auto': cuda if available)", **fv
  )
  flags.DEFINE_float("timeout", 900.0, "seconds per configuration", **fv)
  # One configuration in this process (the parent's subprocesses): METHOD N D.
  flags.DEFINE_multi_string("child", None, "internal: METHOD N D of one child run", **fv)


def _measure_grid(args: flags.FlagValues, methods: list[str]) -> list[dict]:
  """One row per (N, D, method) of the flags: timed in a child process, or why it was skipped."""
  rows = []
  for n in args.n:
    for d in args.d:
      for method in methods:
        row = {"n": n, "d": d, "method": method}
        est_bytes, est_flops = estimate(method, n, d)
        if est_bytes > args.max_bytes:
          row["status"] = f"skipped: needs ~{est_bytes / 2**30:.1f} GiB > --max-bytes"
        elif est_flops > args.max_gflop * 1e9:
          row["status"] = f"skipped: ~{est_flops / 1e9:.0f} GFLOP > --max-gflop"
        else:
          row.update(_run_child(method, n, d, args.repeats, args.timeout, args.torch_device))
        row["est_bytes"], row["est_gflop"] = est_bytes, est_flops / 1e9
        rows.append(row)
        status = row["status"]
        timing = f"{row['median_s']:.3f} s" if status == "ok" else status
        print(f"N={n} D={d} {method}: {timing}", file=sys.stderr, flush=True)

  return rows


def _command(args: flags.FlagValues, argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if args.child and len(args.child) != 3:
    raise app.UsageError(f"--child takes METHOD N D, got {args.child}")
  if args.child:
    method, n, d = args.child[0], int(args.child[1]), int(args.child[2])
    result = (
      run_torch(n, d, args.repeats, device=args.torch_device)
      if method == TORCH
      else run_jax(method, n, d, args.repeats)
    )
    print(json.dumps(result))
    return 0

  from barlow_jax import losses

  for method in args.methods:
    if method not in losses.METHODS:
      raise app.UsageError(f"--methods: unknown method {method!r}; choose from {losses.METHODS}")
  use_torch = _torch_available() if args.torch is None else args.torch
  if use_torch and not _torch_available():
    raise app.UsageError("--torch: torch is not importable")
  methods = list(args.methods) + ([TORCH] if use_torch else [])

  rows = _measure_grid(args, methods)
  table = format_table(rows)
  print(table)
  with open(args.out, "w") as f:
    json.dump(
      {
        "command": shlex.join(
          ["python", "-m", "barlow_jax.benchmark", "loss", *cli.given_flags(args)]
        ),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "rows": rows,
        "table_markdown": table,
      },
      f,
      indent=1,
    )
  print(f"wrote {args.out}", file=sys.stderr)
  return 0


COMMAND = cli.Command("python -m barlow_jax.benchmark loss", define_flags, _command, __doc__)


def main(argv: list[str]) -> int:
  """The command line in-process: `argv[0]` is "loss", then the flags."""
  return COMMAND(argv)

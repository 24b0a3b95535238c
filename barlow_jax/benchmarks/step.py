r"""Images/s of a full training step, the share of time spent waiting on input, FLOPs per image.

    python -m barlow_jax.benchmark step                               # CPU-sized defaults
    python -m barlow_jax.benchmark step --batch=256 --image_size=224 --dtype=bfloat16 \
        --input=device --on_device=both --peer=torch --steps=20       # GPU/TPU

One training step = both views through the backbone and projector, the loss, the backward pass,
the optimizer update (LARS by default) and the online probe, jitted over all devices exactly as
`barlow_jax.train` runs it (ResNet-50 + 8192-8192-8192 by default). Measurements:

- "device batch": the same global batch of uint8 views (as the input pipeline emits them),
  already on the devices, fed to every step: the compute ceiling. Images/s from the median of
  per-step times, each step waited for (`block_until_ready`).
- "input pipeline" (needs TensorFlow): the real two-view tf.data pipeline (JPEG decode, random
  resized crop, colour jitter, blur, solarize, ...) on a folder of synthetic random JPEGs
  (`--source_size` px) written to a temporary directory, with the trainer's device prefetch. The
  input-wait share is the time the loop spent blocked in `next(batches)` over the wall time, and
  `1 - device / pipeline` step time is reported beside it.
- `--on_device=on|both`: the same with `config.augment.on_device=True` (colour augmentations inside
  the step; needs `barlow_jax.data.device_augment`); with `both`, their share of the step's time and
  FLOPs is the difference between the two compiled steps.
- `--peer=torch`: the reference's step in PyTorch on the same device (`barlow_jax.benchmarks.
  torch_peer`: fp16 autocast + GradScaler as the reference, and a tuned bf16 channels-last
  variant), with the ratio of the JAX step's images/s to each. PyTorch runs first and returns its
  cached memory, so that JAX's allocator, which keeps what it takes, does not starve it.

FLOPs per image come from XLA's cost analysis of the step (forward + backward + update, divided by
the global batch: one "image" is one example, i.e. a pair of views), of the lowered program (the
model's arithmetic, before the backend's rewrites). "compile" is the first call: compilation and
one step. Utilisation (MFU) = images/s x
FLOPs per image / the accelerator's dense bf16 peak (`--peak_tflops`, known chips by default); the
PyTorch peers are credited with the same FLOPs per image (same network, loss and update).
"""

import importlib.util
import os
import statistics
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

from barlow_jax import benchmarks, cli

# Dense bf16 peak TFLOP/s by device-kind substring (vendor datasheets), most specific first.
PEAK_TFLOPS = (
  ("H100 PCIe", 756.0),
  ("H200", 989.0),
  ("H100", 989.0),
  ("A100", 312.0),
  ("TPU v4", 275.0),
  ("TPU v5 lite", 197.0),
  ("TPU v5e", 197.0),
  ("TPU v5p", 459.0),
  ("TPU v6", 918.0),
)
TORCH_VARIANTS = ("reference", "tuned", "tuned_compiled")


def define_flags(flag_values: flags.FlagValues) -> None:
  """This benchmark's flags (`barlow_jax.cli.Command`)."""
  fv = {"flag_values": flag_values}
  benchmarks.define_shared_flags(
    flag_values,
    batch=16,
    image_size=64,
    dtype="float32",
    backbone="ResNet50",
    width=1.0,
    projector="8192-8192-8192",
    optimizer="lars",
    steps=(5, "timed steps per measurement (0: compile + FLOPs only)"),
    warmup=2,
    out="",
  )
  flags.DEFINE_enum(
    "input",
    "both",
    ("both", "device", "pipeline"),
    "which measurements to run ('both' drops the pipeline where TensorFlow is missing)",
    **fv,
  )
  flags.DEFINE_enum(
    "on_device",
    "off",
    ("off", "on", "both"),
    "config.augment.on_device for the JAX step: off, on, or both (their difference)",
    **fv,
  )
  flags.DEFINE_enum("peer", "none", ("none", "torch"), "the PyTorch peer", **fv)
  flags.DEFINE_multi_enum(
    "peer_variants",
    ["reference", "tuned"],
    TORCH_VARIANTS,
    "PyTorch variants with --peer=torch (tuned_compiled: torch.compile, minutes to build)",
    **fv,
  )
  flags.DEFINE_string("peer_device", "auto", "torch device ('auto': cuda if any)", **fv)
  flags.DEFINE_float("peak_tflops", 0.0, "peak TFLOP/s for MFU (0: known chips)", **fv)
  flags.DEFINE_integer("source_size", 0, "synthetic JPEG side (0: auto)", **fv)
  flags.register_multi_flags_validator(
    ["batch", "image_size", "steps", "warmup"],
    lambda v: v["batch"] >= 1 and v["image_size"] >= 8 and v["steps"] >= 0 and v["warmup"] >= 0,
    "--batch >= 1, --image_size >= 8, --steps >= 0 and --warmup >= 0",
    **fv,
  )


COMMAND_PROG = "python -m barlow_jax.benchmark step"


def _parse(argv: list[str]) -> flags.FlagValues:
  return COMMAND.parse(argv)[0]


def _progress(message: str) -> None:
  print(f"[step benchmark] {message}", file=sys.stderr, flush=True)


def _has(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):
    return False


def _config(args, folder: str, on_device: bool):
  from barlow_jax.config import base_config

  config = base_config()
  config.dataset.name = "folder"
  config.dataset.folder = folder
  config.dataset.eval_split = ""
  config.dataset.probe_split = ""
  config.dataset.image_size = args.image_size
  config.dataset.shuffle_buffer = 256
  config.augment.on_device = on_device
  config.model.backbone = args.backbone
  config.model.width = args.width
  config.model.projector = args.projector
  config.model.dtype = args.dtype
  config.optim.name = args.optimizer
  config.optim.warmup_epochs = 0.0
  config.batch_size = args.batch
  config.num_train_steps = 10**6
  config.online_probe = False
  return config


def _write_jpegs(folder: str, count: int, size: int, seed: int = 0) -> None:
  """Random smooth-ish RGB images as JPEG files (decode cost comparable to photos)."""
  import tensorflow as tf

  rng = np.random.default_rng(seed)
  small = max(size // 8, 2)
  for i in range(count):
    coarse = rng.uniform(0, 255, size=(small, small, 3)).astype(np.float32)
    image = tf.image.resize(coarse[None], (size, size), method="bilinear")[0]
    noise = rng.normal(0, 12, size=(size, size, 3))
    pixels = np.clip(image.numpy() + noise, 0, 255).astype(np.uint8)
    tf.io.write_file(os.path.join(folder, f"img_{i:04d}.jpg"), tf.io.encode_jpeg(pixels))


def _flops(stage) -> float:
  """The 'flops' of XLA's cost analysis of a `Lowered` or `Compiled` (NaN where unavailable)."""
  try:
    analysis = stage.cost_analysis()
  except Exception:  # noqa: BLE001 -- some backends implement no cost analysis.
    return float("nan")
  if isinstance(analysis, list | tuple):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", float("nan")))


def peak_flops(device_kind: str, override_tflops: float = 0.0) -> float:
  """Dense bf16 peak FLOP/s of `device_kind` (NaN when unknown and not given)."""
  if override_tflops > 0:
    return override_tflops * 1e12
  for name, tflops in PEAK_TFLOPS:
    if name.lower() in device_kind.lower():
      return tflops * 1e12
  return float("nan")


def _measure_jax(args, on_device: bool, pipeline: bool) -> dict:
  """Compiles the step for one `config.augment.on_device` setting and times it."""
  import jax

  from barlow_jax import parallel, train_state, train_step

  out = {"on_device": on_device}
  with tempfile.TemporaryDirectory() as folder:
    source = args.source_size or max(int(args.image_size * 1.15), args.image_size + 8)
    num_images = max(2 * args.batch, 64)
    config = _config(args, folder, on_device)
    config.num_train_examples = num_images
    mesh = parallel.create_mesh()
    # The schedule's length does not change the step's work; no dataset needed for it.
    state = train_state.create_train_state(
      config, jax.random.key(0), mesh=mesh, steps_per_epoch=num_images // args.batch
    )
    step = train_step.jit_train_step(config, mesh, state)
    rng = np.random.default_rng(0)
    shape = (args.batch // jax.process_count(), args.image_size, args.image_size, 3)
    local = {v: rng.integers(0, 256, size=shape, dtype=np.uint8) for v in ("view_a", "view_b")}
    device_batch = parallel.global_batch(local, mesh)

    lowered = step.lower(state, device_batch)
    out["flops_per_step"] = _flops(lowered)
    if out["flops_per_step"] != out["flops_per_step"]:  # No cost analysis before compiling.
      out["flops_per_step"] = _flops(lowered.compile())
    out["flops_per_image"] = out["flops_per_step"] / args.batch
    # Compiled by its first call: `lower().compile()` would not fill jit's own cache, and the
    # timed calls would compile it a second time.
    _progress(f"compiling the JAX step (augment.on_device={on_device})")
    t0 = time.perf_counter()
    state, metrics = step(state, device_batch, False)
    jax.block_until_ready(metrics)
    out["compile_seconds"] = time.perf_counter() - t0
    _progress(f"compiled (and ran once) in {out['compile_seconds']:.1f} s")

    def timed(batches, n, per_step):
      nonlocal state
      waited, times = 0.0, []
      start = time.perf_counter()
      metrics = None
      for _ in range(n):
        t = time.perf_counter()
        batch = next(batches)
        waited += time.perf_counter() - t
        state, metrics = step(state, batch, False)
        if per_step:
          jax.block_until_ready(metrics)
          times.append(time.perf_counter() - t)
      jax.block_until_ready((state.params, metrics))
      return time.perf_counter() - start, waited, times

    def repeat(batch):
      while True:
        yield batch

    if args.steps and args.input != "pipeline":
      timed(repeat(device_batch), args.warmup, False)
      _, _, times = timed(repeat(device_batch), args.steps, True)
      out["device_step_seconds"] = statistics.median(times)
      out["device_step_times_s"] = times
      out["device_images_per_second"] = args.batch / out["device_step_seconds"]
      _progress(f"device batch: {out['device_images_per_second']:.1f} images/s")
    if args.steps and pipeline:
      from barlow_jax import data as input_pipeline

      _write_jpegs(folder, num_images, source)
      out["source_size"] = source
      batches = parallel.device_prefetch(
        input_pipeline.create_pretrain_iterator(config), mesh, config.dataset.prefetch
      )
      timed(batches, args.warmup, False)
      seconds, waited, _ = timed(batches, args.steps, False)
      out["pipeline_step_seconds"] = seconds / args.steps
      out["pipeline_images_per_second"] = args.batch * args.steps / seconds
      out["input_wait_share"] = waited / seconds
      if "device_step_seconds" in out:
        out["slowdown_share"] = max(
          0.0, 1.0 - out["device_step_seconds"] / out["pipeline_step_seconds"]
        )
    out["num_compiles"] = step.num_traces
    del state
  return out


def _run_peer(args) -> dict:
  """The PyTorch peers (before JAX touches the accelerator), or why they were skipped."""
  if not _has("torch"):
    return {"skipped": "torch is not installed (pip install torch): no PyTorch peer measured"}
  from barlow_jax import models
  from barlow_jax.benchmarks import torch_peer

  device = torch_peer.default_device() if args.peer_device == "auto" else args.peer_device
  _progress(f"PyTorch peers {args.peer_variants} on {device}")
  results = torch_peer.run_peers(
    args.peer_variants,
    device=device,
    backbone=args.backbone,
    projector=models.parse_projector_sizes(args.projector),
    width=args.width,
    batch=args.batch,
    image_size=args.image_size,
    steps=args.steps,
    warmup=args.warmup,
  )
  return {"device": device, "variants": results}


def run(args) -> dict:
  peer = _run_peer(args) if args.peer == "torch" else None

  import jax

  devices = jax.device_count()
  if args.batch % devices:
    raise ValueError(f"--batch={args.batch} must be divisible by the {devices} devices")
  device_kind = jax.devices()[0].device_kind
  result = {
    "backbone": args.backbone,
    "width": args.width,
    "projector": args.projector,
    "optimizer": args.optimizer,
    "batch": args.batch,
    "image_size": args.image_size,
    "dtype": args.dtype,
    "devices": devices,
    "device_kind": device_kind,
    "platform": jax.devices()[0].platform,
    "jax": jax.__version__,
    "host_cpus": os.cpu_count(),
    "steps": args.steps,
    "peak_flops": peak_flops(device_kind, args.peak_tflops),
    "notes": [],
  }
  pipeline = args.input in ("both", "pipeline")
  if pipeline and not _has("tensorflow"):
    pipeline = False
    result["notes"].append("input pipeline not measured: TensorFlow is not installed")
  settings = {"off": [False], "on": [True], "both": [False, True]}[args.on_device]
  if True in settings and not _has("barlow_jax.data.device_augment"):
    settings.remove(True)
    result["notes"].append(
      "config.augment.on_device=True not measured: barlow_jax.data.device_augment is not in this "
      "checkout"
    )
  result["modes"] = {}
  for on_device in settings:
    name = "device_augment" if on_device else "host_augment"
    result["modes"][name] = _measure_jax(args, on_device, pipeline)
  if result["modes"]:
    # The first mode's numbers at the top level too (the JSON layout before `modes` existed).
    first = next(iter(result["modes"].values()))
    result.update({k: v for k, v in first.items() if k != "on_device"})
  modes = result["modes"]
  if "device_augment" in modes and "host_augment" in modes:
    on, off = modes["device_augment"], modes["host_augment"]
    flops_on, flops_off = on["flops_per_step"], off["flops_per_step"]
    result["device_augment_flops_share"] = (flops_on - flops_off) / flops_on
    if "device_step_seconds" in on and "device_step_seconds" in off:
      delta = on["device_step_seconds"] - off["device_step_seconds"]
      result["device_augment_time_share"] = delta / on["device_step_seconds"]
  for mode in modes.values():
    if "device_images_per_second" in mode:
      flops_per_second = mode["device_images_per_second"] * mode["flops_per_image"]
      mode["mfu"] = flops_per_second / result["peak_flops"]
  if peer is not None:
    result["peer"] = peer
    jax_ips = modes.get("host_augment", {}).get("device_images_per_second")
    for variant in peer.get("variants", []):
      ips = variant.get("images_per_second")
      if ips and "flops_per_image" in result:
        variant["mfu"] = ips * result["flops_per_image"] / result["peak_flops"]
      if ips and jax_ips:
        variant["jax_speedup"] = jax_ips / ips
    on_cuda = str(peer.get("device")).startswith("cuda")
    if "variants" in peer and on_cuda != (result["platform"] == "gpu"):
      result["notes"].append(
        f"PyTorch ran on {peer.get('device')} and JAX on {result['platform']}: not the same device"
      )
  for key in ("device_images_per_second", "pipeline_images_per_second"):
    if key in result:
      result[f"{key}_per_device"] = result[key] / devices
  return result


def _rate(images_per_second: float, step_seconds: float) -> str:
  return f"{images_per_second:.1f} ({step_seconds * 1e3:.1f} ms/step)"


def table(result: dict) -> str:
  """The result of `run` as aligned text rows."""
  rows = [
    ("model", f"{result['backbone']} + {result['projector']} ({result['optimizer']})"),
    ("batch / image / dtype", f"{result['batch']} / {result['image_size']} px / {result['dtype']}"),
    ("devices", f"{result['devices']} x {result['device_kind']} ({result['host_cpus']} host CPUs)"),
  ]
  for name, mode in result["modes"].items():
    rows += [
      (f"[{name}] compile", f"{mode['compile_seconds']:.1f} s"),
      (f"[{name}] GFLOPs per image", f"{mode['flops_per_image'] / 1e9:.2f}"),
    ]
    if "device_images_per_second" in mode:
      mfu = mode.get("mfu", float("nan"))
      rate = _rate(mode["device_images_per_second"], mode["device_step_seconds"])
      rows.append((f"[{name}] device batch: images/s", f"{rate}, MFU {100 * mfu:.1f}%"))
    if "pipeline_images_per_second" in mode:
      rate = _rate(mode["pipeline_images_per_second"], mode["pipeline_step_seconds"])
      rows.append((f"[{name}] input pipeline: images/s", rate))
      rows.append((f"[{name}] time waiting on input", f"{100 * mode['input_wait_share']:.1f}%"))
  if "device_augment_time_share" in result:
    rows.append(
      (
        "on-device augmentations: share of step",
        f"{100 * result['device_augment_time_share']:.1f}% of time, "
        f"{100 * result['device_augment_flops_share']:.2f}% of FLOPs",
      )
    )
  peer = result.get("peer")
  if peer and "skipped" in peer:
    rows.append(("PyTorch peer", peer["skipped"]))
  for variant in (peer or {}).get("variants", []):
    name = f"PyTorch {variant['variant']}"
    if "error" in variant:
      rows.append((name, f"failed: {variant['error']}"))
      continue
    text = _rate(variant["images_per_second"], variant["step_seconds"])
    text += f" on {variant['device']}, {variant['autocast_dtype']} autocast"
    if variant.get("skipped_steps"):
      text += f", {variant['skipped_steps']} updates skipped by GradScaler"
    if "jax_speedup" in variant:
      text += f"; JAX / this = {variant['jax_speedup']:.2f}x"
    rows.append((name, text))
  rows += [("note", note) for note in result["notes"]]
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _command(args: flags.FlagValues, argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if args.input == "pipeline" and not _has("tensorflow"):
    # Not a flag error: this machine lacks TensorFlow. Exit 2, as this check always has.
    print(
      f"{COMMAND_PROG}: --input=pipeline needs TensorFlow (pip install tensorflow-cpu); or "
      "--input=device",
      file=sys.stderr,
    )
    return 2
  result = run(args)
  print(table(result))
  if args.out:
    benchmarks.write_json(result, args.out)
    print(f"wrote {args.out}")
  return 0


COMMAND = cli.Command(COMMAND_PROG, define_flags, _command, __doc__)


def main(argv: list[str]) -> int:
  """The command line in-process: `argv[0]` is "step", then the flags."""
  return COMMAND(argv)


if __name__ == "__main__":
  COMMAND.run()

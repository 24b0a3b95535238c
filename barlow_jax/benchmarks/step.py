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

FLOPs per image (forward + backward + update, divided by the global batch: one "image" is one
example, i.e. a pair of views): `flops_per_image_analytic` is `barlow_jax.benchmarks.flops`'s exact
count from the model's shapes (its docstring states the rule), the same on every backend;
`flops_per_image` is XLA's cost analysis of the lowered program, which on a GPU misses the
convolutions it hands to cuDNN. "compile" is the first call: compilation and one step. Utilisation
(MFU) = images/s x analytic FLOPs per image / the accelerator's dense bf16 peak (`--peak_tflops`,
known chips by default); the PyTorch peers are credited with the same FLOPs per image (same
network, loss and update).
"""

import importlib.util
import os
import sys

from absl import app, flags

from barlow_jax import benchmarks, cli
from barlow_jax.benchmarks import step_jax

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


def parse_flags(argv: list[str]) -> flags.FlagValues:
  """The step benchmark's flags from `argv` ("step", then the flags), as `main` parses them."""
  return COMMAND.parse(argv)[0]


def has_module(module: str) -> bool:
  """Whether `module` can be imported here (without importing it)."""
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):
    return False


def peak_flops(device_kind: str, override_tflops: float = 0.0) -> float:
  """Dense bf16 peak FLOP/s of `device_kind` (NaN when unknown and not given)."""
  if override_tflops > 0:
    return override_tflops * 1e12
  for name, tflops in PEAK_TFLOPS:
    if name.lower() in device_kind.lower():
      return tflops * 1e12
  return float("nan")


def run_peer(args) -> dict:
  """The PyTorch peers (before JAX touches the accelerator), or why they were skipped."""
  if not has_module("torch"):
    return {"skipped": "torch is not installed (pip install torch): no PyTorch peer measured"}
  from barlow_jax import models
  from barlow_jax.benchmarks import torch_peer

  device = torch_peer.default_device() if args.peer_device == "auto" else args.peer_device
  step_jax.progress(f"PyTorch peers {args.peer_variants} on {device}")
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


def _compare(result: dict, peer: dict | None) -> None:
  """Adds to `result` the derived numbers: on-device augmentation shares, MFU, JAX / PyTorch."""
  modes = result["modes"]
  if "device_augment" in modes and "host_augment" in modes:
    on, off = modes["device_augment"], modes["host_augment"]
    flops_on, flops_off = on["flops_per_image_analytic"], off["flops_per_image_analytic"]
    result["device_augment_flops_share"] = (flops_on - flops_off) / flops_on
    if "device_step_seconds" in on and "device_step_seconds" in off:
      delta = on["device_step_seconds"] - off["device_step_seconds"]
      result["device_augment_time_share"] = delta / on["device_step_seconds"]
  for mode in modes.values():
    if "device_images_per_second" in mode:
      flops_per_second = mode["device_images_per_second"] * mode["flops_per_image_analytic"]
      mode["mfu"] = flops_per_second / result["peak_flops"]
  if peer is not None:
    result["peer"] = peer
    jax_ips = modes.get("host_augment", {}).get("device_images_per_second")
    for variant in peer.get("variants", []):
      ips = variant.get("images_per_second")
      if ips and "flops_per_image_analytic" in result:
        variant["mfu"] = ips * result["flops_per_image_analytic"] / result["peak_flops"]
      if ips and jax_ips:
        variant["jax_speedup"] = jax_ips / ips
    on_cuda = str(peer.get("device")).startswith("cuda")
    if "variants" in peer and on_cuda != (result["platform"] == "gpu"):
      result["notes"].append(
        f"PyTorch ran on {peer.get('device')} and JAX on {result['platform']}: not the same device"
      )


def run(args) -> dict:
  """Measures what `args` (the step flags) ask for; the result `table` prints and --out writes."""
  peer = run_peer(args) if args.peer == "torch" else None

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
  if pipeline and not has_module("tensorflow"):
    pipeline = False
    result["notes"].append("input pipeline not measured: TensorFlow is not installed")
  settings = {"off": [False], "on": [True], "both": [False, True]}[args.on_device]
  if True in settings and not has_module("barlow_jax.data.device_augment"):
    settings.remove(True)
    result["notes"].append(
      "config.augment.on_device=True not measured: barlow_jax.data.device_augment is not in this "
      "checkout"
    )
  result["modes"] = {}
  for on_device in settings:
    name = "device_augment" if on_device else "host_augment"
    result["modes"][name] = step_jax.measure_jax(args, on_device, pipeline)
  if result["modes"]:
    # The first mode's numbers at the top level too (the JSON layout before `modes` existed).
    first = next(iter(result["modes"].values()))
    result.update({k: v for k, v in first.items() if k != "on_device"})
  _compare(result, peer)
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
      (
        f"[{name}] GFLOPs per image",
        f"{mode['flops_per_image_analytic'] / 1e9:.2f} analytic, "
        f"{mode['flops_per_image'] / 1e9:.2f} XLA cost analysis",
      ),
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
  if args.input == "pipeline" and not has_module("tensorflow"):
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

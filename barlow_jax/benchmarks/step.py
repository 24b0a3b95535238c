r"""Images/s of a full training step, the share of time spent waiting on input, FLOPs per image.

    python -m barlow_jax.benchmark step                               # CPU-sized defaults
    python -m barlow_jax.benchmark step --batch=256 --image_size=224 --dtype=bfloat16  # GPU/TPU

One training step = both views through the backbone and projector, the loss, the backward pass,
the optimizer update (LARS by default) and the online probe, jitted over all devices exactly as
`barlow_jax.train` runs it (ResNet-50 + 8192-8192-8192 by default). Two measurements:

- "device batch": the same global batch, already on the devices, fed to every step: the compute
  ceiling.
- "input pipeline": the real two-view tf.data pipeline (JPEG decode, random resized crop, colour
  jitter, blur, solarize, ...) on a folder of synthetic random JPEGs (`--source_size` px) written
  to a temporary directory, with the trainer's device prefetch. The input-wait share is the time
  the loop spent blocked in `next(batches)` over the wall time, and `1 - device / pipeline` step
  time is reported beside it.

FLOPs per image come from XLA's cost analysis of the compiled step (forward + backward + update,
divided by the global batch: one "image" is one example, i.e. a pair of views). Utilisation =
images/s x FLOPs per image / the accelerator's peak FLOP/s.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np


def _parse(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m barlow_jax.benchmark step", description=__doc__)
  parser.add_argument("--batch", type=int, default=16, help="global batch (examples)")
  parser.add_argument("--image_size", type=int, default=64, help="crop side in pixels")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--backbone", default="ResNet50")
  parser.add_argument("--projector", default="8192-8192-8192")
  parser.add_argument("--optimizer", default="lars", choices=("lars", "sgd", "adamw", "lamb"))
  parser.add_argument(
    "--steps", type=int, default=5, help="timed steps per measurement (0: compile + FLOPs only)"
  )
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
  parser.add_argument(
    "--input",
    default="both",
    choices=("both", "device", "pipeline"),
    help="which measurements to run",
  )
  parser.add_argument("--source_size", type=int, default=0, help="synthetic JPEG side (0: auto)")
  parser.add_argument("--out", default="", help="JSON output path ('' = print only)")
  args = parser.parse_args(argv[1:])
  if args.batch < 1 or args.image_size < 8 or args.steps < 0 or args.warmup < 0:
    parser.error("--batch >= 1, --image_size >= 8, --steps >= 0 and --warmup >= 0")
  return args


def _config(args, folder: str):
  from barlow_jax.config import base_config

  config = base_config()
  config.dataset.name = "folder"
  config.dataset.folder = folder
  config.dataset.eval_split = ""
  config.dataset.probe_split = ""
  config.dataset.image_size = args.image_size
  config.dataset.shuffle_buffer = 256
  config.model.backbone = args.backbone
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


def _flops(compiled) -> float:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, list | tuple):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", float("nan")))


def run(args) -> dict:
  import jax

  from barlow_jax import input_pipeline, train

  devices = jax.device_count()
  if args.batch % devices:
    raise ValueError(f"--batch={args.batch} must be divisible by the {devices} devices")
  result = {
    "backbone": args.backbone,
    "projector": args.projector,
    "optimizer": args.optimizer,
    "batch": args.batch,
    "image_size": args.image_size,
    "dtype": args.dtype,
    "devices": devices,
    "device_kind": jax.devices()[0].device_kind,
    "platform": jax.devices()[0].platform,
    "host_cpus": os.cpu_count(),
    "steps": args.steps,
  }
  with tempfile.TemporaryDirectory() as folder:
    source = args.source_size or max(int(args.image_size * 1.15), args.image_size + 8)
    num_images = max(2 * args.batch, 64)
    config = _config(args, folder)
    config.num_train_examples = num_images
    _write_jpegs(folder, num_images, source)
    result["source_size"] = source

    mesh = train.create_mesh()
    steps_per_epoch = input_pipeline.steps_per_epoch(config)
    state = train.create_train_state(
      config, jax.random.key(0), mesh=mesh, steps_per_epoch=steps_per_epoch
    )
    step = train._TracedStep(config, mesh, state)
    rng = np.random.default_rng(0)
    shape = (args.batch // jax.process_count(), args.image_size, args.image_size, 3)
    local = {
      "view_a": rng.normal(size=shape).astype(np.float32),
      "view_b": rng.normal(size=shape).astype(np.float32),
    }
    device_batch = train.global_batch(local, mesh)

    t0 = time.perf_counter()
    compiled = step._fn.lower(state, device_batch, np.bool_(False)).compile()
    result["compile_seconds"] = time.perf_counter() - t0
    flops = _flops(compiled)
    result["flops_per_step"] = flops
    result["flops_per_image"] = flops / args.batch

    def timed(batches, n):
      nonlocal state
      waited = 0.0
      start = time.perf_counter()
      metrics = None
      for _ in range(n):
        t = time.perf_counter()
        batch = next(batches)
        waited += time.perf_counter() - t
        state, metrics = step(state, batch, False)
      jax.block_until_ready((state.params, metrics))
      return time.perf_counter() - start, waited

    def repeat(batch):
      while True:
        yield batch

    if args.steps and args.input in ("both", "device"):
      timed(repeat(device_batch), args.warmup)
      seconds, _ = timed(repeat(device_batch), args.steps)
      result["device_step_seconds"] = seconds / args.steps
      result["device_images_per_second"] = args.batch * args.steps / seconds
    if args.steps and args.input in ("both", "pipeline"):
      batches = train._device_prefetch(
        input_pipeline.create_pretrain_iterator(config), mesh, config.dataset.prefetch
      )
      timed(batches, args.warmup)
      seconds, waited = timed(batches, args.steps)
      result["pipeline_step_seconds"] = seconds / args.steps
      result["pipeline_images_per_second"] = args.batch * args.steps / seconds
      result["input_wait_share"] = waited / seconds
      if "device_step_seconds" in result:
        result["slowdown_share"] = max(
          0.0, 1.0 - result["device_step_seconds"] / result["pipeline_step_seconds"]
        )
    result["num_compiles"] = step.num_traces
  for key in ("device_images_per_second", "pipeline_images_per_second"):
    if key in result:
      result[f"{key}_per_device"] = result[key] / devices
  return result


def _table(result: dict) -> str:
  rows = [
    ("model", f"{result['backbone']} + {result['projector']} ({result['optimizer']})"),
    ("batch / image / dtype", f"{result['batch']} / {result['image_size']} px / {result['dtype']}"),
    ("devices", f"{result['devices']} x {result['device_kind']} ({result['host_cpus']} host CPUs)"),
    ("compile", f"{result['compile_seconds']:.1f} s"),
    ("GFLOPs per image (fwd+bwd+update)", f"{result['flops_per_image'] / 1e9:.2f}"),
  ]
  if "device_images_per_second" in result:
    rows.append(
      (
        "device batch: images/s",
        f"{result['device_images_per_second']:.1f} "
        f"({result['device_step_seconds'] * 1e3:.0f} ms/step)",
      )
    )
  if "pipeline_images_per_second" in result:
    rows.append(
      (
        "input pipeline: images/s",
        f"{result['pipeline_images_per_second']:.1f} "
        f"({result['pipeline_step_seconds'] * 1e3:.0f} ms/step)",
      )
    )
    rows.append(("time waiting on input", f"{100 * result['input_wait_share']:.1f}%"))
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str]) -> int:
  args = _parse(argv)
  result = run(args)
  print(_table(result))
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2, sort_keys=True)
    print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main(["step", *sys.argv[1:]]))

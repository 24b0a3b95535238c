"""The JAX half of `python -m barlow_jax.benchmark step`: one compiled training step, timed.

`measure_jax` builds the step exactly as `barlow_jax.train` runs it (the config of `step_config`,
`train_state.create_train_state`, `train_step.jit_train_step` over all devices), reads its FLOPs
(`barlow_jax.benchmarks.flops`'s analytic count and XLA's cost analysis), and times it on a
device-resident batch and/or behind the real input pipeline on synthetic JPEGs. The measurements
and their definitions are in the docstring of `barlow_jax.benchmarks.step`, which assembles and
prints the result.
"""

import os
import statistics
import sys
import tempfile
import time

import numpy as np


def progress(message: str) -> None:
  """One progress line on stderr (stdout carries the table)."""
  print(f"[step benchmark] {message}", file=sys.stderr, flush=True)


def step_config(args, folder: str, on_device: bool):
  """The training config the step benchmark measures: the flags' model on a JPEG folder."""
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


def write_jpegs(folder: str, count: int, size: int, seed: int = 0) -> None:
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


def xla_flops(stage) -> float:
  """The 'flops' of XLA's cost analysis of a `Lowered` or `Compiled` (NaN where unavailable)."""
  try:
    analysis = stage.cost_analysis()
  except Exception:  # noqa: BLE001 -- some backends implement no cost analysis.
    return float("nan")
  if isinstance(analysis, list | tuple):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", float("nan")))


def _compile(step, state, device_batch, args, config, out: dict):
  """FLOPs of the step into `out` (the analytic count and XLA's), then the first call (compiles);
  returns the state."""
  import jax

  from barlow_jax.benchmarks import flops

  count = flops.step_flops(config)
  out["flops_per_image_analytic"] = count["flops_per_example"]
  out["flops_analytic_breakdown_per_image"] = count["per_example"]
  lowered = step.lower(state, device_batch)
  out["flops_per_step"] = xla_flops(lowered)
  if out["flops_per_step"] != out["flops_per_step"]:  # No cost analysis before compiling.
    out["flops_per_step"] = xla_flops(lowered.compile())
  out["flops_per_image"] = out["flops_per_step"] / args.batch
  # Compiled by its first call: `lower().compile()` would not fill jit's own cache, and the
  # timed calls would compile it a second time.
  progress(f"compiling the JAX step (augment.on_device={config.augment.on_device})")
  t0 = time.perf_counter()
  state, metrics = step(state, device_batch, False)
  jax.block_until_ready(metrics)
  out["compile_seconds"] = time.perf_counter() - t0
  progress(f"compiled (and ran once) in {out['compile_seconds']:.1f} s")
  return state


def _timed(step, state, batches, n: int, per_step: bool):
  """`n` steps on `next(batches)`: (state, wall seconds, seconds in next(), per-step times)."""
  import jax

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
  return state, time.perf_counter() - start, waited, times


def _repeat(batch):
  while True:
    yield batch


def _device_batch(args, mesh):
  """The same global batch of uint8 views every step, already on the devices."""
  import jax

  from barlow_jax import parallel

  rng = np.random.default_rng(0)
  shape = (args.batch // jax.process_count(), args.image_size, args.image_size, 3)
  local = {v: rng.integers(0, 256, size=shape, dtype=np.uint8) for v in ("view_a", "view_b")}
  return parallel.global_batch(local, mesh)


def measure_jax(args, on_device: bool, pipeline: bool) -> dict:
  """Compiles the step for one `config.augment.on_device` setting and times it.

  `args`: the step benchmark's flags. Returns the mode's entry of `step.run`'s result: FLOPs,
  compile seconds, and the device-batch and/or input-pipeline rates asked for.
  """
  import jax

  from barlow_jax import parallel, train_state, train_step

  out = {"on_device": on_device}
  with tempfile.TemporaryDirectory() as folder:
    source = args.source_size or max(int(args.image_size * 1.15), args.image_size + 8)
    num_images = max(2 * args.batch, 64)
    config = step_config(args, folder, on_device)
    config.num_train_examples = num_images
    mesh = parallel.create_mesh()
    # The schedule's length does not change the step's work; no dataset needed for it.
    state = train_state.create_train_state(
      config, jax.random.key(0), mesh=mesh, steps_per_epoch=num_images // args.batch
    )
    step = train_step.jit_train_step(config, mesh, state)
    device_batch = _device_batch(args, mesh)
    state = _compile(step, state, device_batch, args, config, out)

    if args.steps and args.input != "pipeline":
      state, *_ = _timed(step, state, _repeat(device_batch), args.warmup, False)
      state, _, _, times = _timed(step, state, _repeat(device_batch), args.steps, True)
      out["device_step_seconds"] = statistics.median(times)
      out["device_step_times_s"] = times
      out["device_images_per_second"] = args.batch / out["device_step_seconds"]
      progress(f"device batch: {out['device_images_per_second']:.1f} images/s")
    if args.steps and pipeline:
      from barlow_jax import data as input_pipeline

      write_jpegs(folder, num_images, source)
      out["source_size"] = source
      batches = parallel.device_prefetch(
        input_pipeline.create_pretrain_iterator(config), mesh, config.dataset.prefetch
      )
      state, *_ = _timed(step, state, batches, args.warmup, False)
      state, seconds, waited, _ = _timed(step, state, batches, args.steps, False)
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

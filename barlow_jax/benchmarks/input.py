"""Input pipeline benchmark: two-view examples per second on this host's CPU.

    python -m barlow_jax.benchmark input [--seconds 10] [--batch 64] [--out input_benchmark.json]
    python -m barlow_jax.benchmark input --peer=pil [--seconds 3] [--repeats 3]

With `--peer=pil`: this project's pipeline and a PIL + NumPy restatement of the reference's
per-view transform (`benchmarks/pil_peer.py`) side by side on one core, on the same JPEG bytes
(`run_peer`, below).

Cases (each the pretraining per-example map of `barlow_jax.data.pretrain`, batched and
prefetched with the pipeline's tf.data options):
  - `imagenet_224_jpeg`: ImageNet-like JPEG bytes (400x350, quality 90, smooth random scenes plus
    texture) -> two 224 px views with the reference augmentations (fused decode-and-crop, bicubic,
    blur A 1.0 / B 0.1, solarize B 0.2).
  - `cifar_32_png`: 32x32 PNG bytes, as TFDS stores CIFAR -> two 32 px views, the CIFAR recipe
    (no blur).
  - `cluttered_digits_20`: the offline default through `create_pretrain_iterator` itself
    (in-memory 20x20 floats, the prototype's augmentations).

Reported: examples/s (one example = both views), and per core = that / the number of CPU cores
this process may use. The images are made in memory: nothing is read from disk, so this measures
decoding + augmentation only. Other processes on the machine share the cores: note the load
average printed with the table.

The side by side (`--peer=pil`): both make two 224 px views with the reference augmentations from
the same JPEG bytes (the ImageNet-like 400x350 images above), in one process pinned to one CPU
core: this project's `tf.data` pipeline (`barlow_jax.data.two_view_fn`, batched, tf.data and
TensorFlow limited to one thread) and `pil_peer` (torchvision's semantics on PIL images, one
DataLoader worker's work). Rates are examples (both views) per second of CPU time the process
used, so other jobs on a shared machine slow the wall clock but not the comparison; each case is
measured `repeats` times, interleaved, and the median is reported. Per-op costs are the
difference in ms per example between the full pipeline and the same pipeline with that op's
probability set to 0.
"""

import gc
import json
import os
import platform
import statistics
import time

import numpy as np
from absl import app, flags

from barlow_jax import benchmarks, cli


def _cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def natural_images(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
  """Smooth random colour fields with edges and fine texture: JPEG sizes like photos'."""
  rng = np.random.RandomState(seed)
  out = np.empty((n, height, width, 3), np.uint8)
  yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
  for i in range(n):
    coarse = rng.uniform(size=(6, 6, 3))
    rows = np.linspace(0, 5, height)
    cols = np.linspace(0, 5, width)
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    r1, c1 = np.minimum(r0 + 1, 5), np.minimum(c0 + 1, 5)
    fr, fc = (rows - r0)[:, None, None], (cols - c0)[None, :, None]
    field = (
      coarse[r0][:, c0] * (1 - fr) * (1 - fc)
      + coarse[r0][:, c1] * (1 - fr) * fc
      + coarse[r1][:, c0] * fr * (1 - fc)
      + coarse[r1][:, c1] * fr * fc
    )
    a, b, c = rng.uniform(-1, 1, 3)
    edge = ((a * yy + b * xx + c) > 0)[..., None] * rng.uniform(-0.3, 0.3, 3)
    texture = 0.08 * rng.normal(size=(height, width, 1)) * np.sin(40 * xx + 17 * yy)[..., None]
    out[i] = np.clip(255 * (field + edge + texture), 0, 255).astype(np.uint8)
  return out


def bytes_dataset(config, encoded: list[bytes], batch: int, threads: int | None = None):
  """The pretraining map over `encoded` images, batched: an iterator of two-view batches.

  `threads` limits tf.data's thread pool (None: the pipeline's own AUTOTUNE settings).
  """
  import tensorflow as tf

  from barlow_jax import data as input_pipeline

  views = input_pipeline.two_view_fn(config, is_bytes=True, with_label=False)
  parallel = tf.data.AUTOTUNE if threads is None else threads
  ds = tf.data.Dataset.from_tensor_slices(encoded).repeat().enumerate()
  ds = ds.map(lambda i, x: views(i // len(encoded), i, x, 0), num_parallel_calls=parallel)
  ds = ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE if threads is None else 1)
  options = input_pipeline.options(config)
  if threads is not None:
    options.threading.private_threadpool_size = threads
  return ds.with_options(options).as_numpy_iterator()


def measure(
  iterator, batch: int, seconds: float, warmup_batches: int = 3, clock=time.perf_counter
) -> dict:
  """Examples per second of `clock` (wall time, or `time.process_time` for CPU time)."""
  for _ in range(warmup_batches):  # Tracing, thread pools, autotuning.
    next(iterator)
  count = 0
  start = clock()
  while True:
    next(iterator)
    count += 1
    elapsed = clock() - start
    if elapsed >= seconds and count >= 3:
      break
  rate = count * batch / elapsed
  return {"examples_per_s": rate, "batches": count, "seconds": elapsed}


def run(seconds: float, batch: int, cases: list[str]) -> list[dict]:
  import tensorflow as tf

  from barlow_jax import config as config_lib
  from barlow_jax import data as input_pipeline

  results = []
  for case in cases:
    config = config_lib.base_config()
    if case == "imagenet_224_jpeg":
      config.dataset.image_size = 224
      images = natural_images(32, 350, 400)
      encoded = [tf.io.encode_jpeg(x, quality=90).numpy() for x in images]
      iterator = bytes_dataset(config, encoded, batch)
    elif case == "cifar_32_png":
      config.dataset.image_size = 32
      for view in (config.augment.view_a, config.augment.view_b):
        view.blur_prob = 0.0
      images = natural_images(256, 32, 32)
      encoded = [tf.io.encode_png(x).numpy() for x in images]
      iterator = bytes_dataset(config, encoded, batch)
    elif case == "cluttered_digits_20":
      config.dataset.name = "cluttered_digits"
      config.dataset.image_size = 20
      for view in (config.augment.view_a, config.augment.view_b):
        view.crop_area = (0.4, 1.0)
        view.flip_prob = 0.0
        view.hue = 0.5
        view.channel_permute_prob = 0.5
        view.blur_prob = 0.5
        view.blur_sigma = (0.1, 1.0)
        view.solarize_prob = 0.0
        view.noise_std = 0.03
      config.batch_size = batch
      iterator = input_pipeline.create_pretrain_iterator(config, process_index=0, process_count=1)
    else:
      raise ValueError(f"unknown case {case!r}")
    result = measure(iterator, batch, seconds)
    result.update(case=case, image_size=int(config.dataset.image_size), batch=batch)
    results.append(result)
  return results


CASES = ("imagenet_224_jpeg", "cifar_32_png", "cluttered_digits_20")

FULL = "barlow_jax, host augmentations"
HOST_PART = "barlow_jax, on_device host part (decode, crop, flip)"
PEER = "PIL peer (reference transform)"
# Per-op cases: the full pipeline with these view keys set to 0.
WITHOUT = {
  "colour jitter": ("jitter_prob",),
  "grayscale": ("grayscale_prob",),
  "blur": ("blur_prob",),
  "solarize": ("solarize_prob",),
}


def pin_to_one_core() -> int:
  """Restricts this process to one CPU core (the first it may use); returns the core."""
  core = min(os.sched_getaffinity(0))
  os.sched_setaffinity(0, {core})
  return core


def _cpu_rate(make_iterator, batch: int, cpu_seconds: float) -> float:
  """Examples per CPU-second of this process, after two warm-up batches."""
  iterator = make_iterator()
  result = measure(iterator, batch, cpu_seconds, 2, clock=time.process_time)
  del iterator
  gc.collect()  # Ends the dataset's threads before the next case runs.
  return result["examples_per_s"]


def _peer_config(*zero_keys: str, on_device: bool = False, size: int = 224):
  from barlow_jax import config as config_lib

  config = config_lib.base_config()
  config.dataset.image_size = size
  config.augment.on_device = on_device
  for view in (config.augment.view_a, config.augment.view_b):
    for key in zero_keys:
      view[key] = 0.0
  return config


def run_peer(
  seconds: float, batch: int, repeats: int, encoded: list[bytes], size: int = 224
) -> dict:
  """`--peer=pil`: medians over `repeats` interleaved measurements (see the module docstring).

  Args:
    seconds: CPU seconds per measurement. batch: examples per batch.
    repeats: measurements per case. encoded: JPEG bytes. size: output side of the views.
  """
  import tensorflow as tf

  from barlow_jax.benchmarks import pil_peer

  def ours(config):
    def make():
      return bytes_dataset(config, encoded, batch, threads=1)

    return make

  cases = {
    FULL: ours(_peer_config(size=size)),
    HOST_PART: ours(_peer_config(on_device=True, size=size)),
  }
  for name, keys in WITHOUT.items():
    cases[f"without {name}"] = ours(_peer_config(*keys, size=size))
  cases[PEER] = lambda: pil_peer.batches(encoded, batch, size=size)
  rates = {name: [] for name in cases}
  del tf
  for _ in range(repeats):
    for name, make in cases.items():
      rates[name].append(_cpu_rate(make, batch, seconds))
  medians = {name: statistics.median(r) for name, r in rates.items()}
  peer = medians[PEER]
  ms = {name: 1000.0 / rate for name, rate in medians.items()}
  return {
    "rates": rates,
    "median_examples_per_cpu_s": medians,
    "ratio_to_peer": {name: rate / peer for name, rate in medians.items()},
    "op_ms_per_example": {name: ms[FULL] - ms[f"without {name}"] for name in WITHOUT},
  }


def peer_report(result: dict, core: int, load) -> str:
  lines = [
    f"one core (cpu {core}), load average before the run {load[0]:.2f} / {load[1]:.2f} / "
    f"{load[2]:.2f}; examples (two 224 px views) per CPU-second, median of "
    f"{len(next(iter(result['rates'].values())))}",
    f"{'case':<56}{'examples/s':>12}{'ms/example':>12}{'x PIL':>8}",
  ]
  for name, rate in result["median_examples_per_cpu_s"].items():
    if name.startswith("without"):
      continue
    ratio = result["ratio_to_peer"][name]
    lines.append(f"{name:<56}{rate:>12.1f}{1000 / rate:>12.2f}{ratio:>8.2f}")
  lines.append("per-op cost in the full pipeline (ms per example, both views):")
  for name, ms in result["op_ms_per_example"].items():
    lines.append(f"  {name:<20}{ms:>8.2f}")
  return "\n".join(lines)


def natural_jpegs(n: int = 32, height: int = 350, width: int = 400) -> list[bytes]:
  """The input benchmark's ImageNet-like JPEGs (400x350 by default, quality 90)."""
  import tensorflow as tf

  images = natural_images(n, height, width)
  return [tf.io.encode_jpeg(np.asarray(x), quality=90).numpy() for x in images]


def define_flags(flag_values: flags.FlagValues) -> None:
  """This benchmark's flags (`barlow_jax.cli.Command`)."""
  benchmarks.define_shared_flags(
    flag_values,
    seconds=10.0,
    batch=(64, "Examples per batch."),
    out=("input_benchmark.json", "JSON results path."),
    repeats=(3, "With --peer: interleaved repeats."),
  )
  flags.DEFINE_multi_enum("cases", list(CASES), CASES, "Cases to run.", flag_values=flag_values)
  flags.DEFINE_enum(
    "peer",
    None,
    ("pil",),
    "Measure against the reference's PIL transform, one core each (ignores --cases).",
    flag_values=flag_values,
  )


def _command(args: flags.FlagValues, argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if args.peer:
    return _main_peer(args)
  cores = _cores()
  load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
  results = run(args.seconds, args.batch, args.cases)
  print(
    f"host: {platform.processor() or platform.machine()}, {cores} cores usable, "
    f"load average before the run {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
  )
  print(f"{'case':<22}{'size':>6}{'examples/s':>14}{'per core':>12}")
  for r in results:
    r["per_core"] = r["examples_per_s"] / cores
    print(f"{r['case']:<22}{r['image_size']:>6}{r['examples_per_s']:>14.1f}{r['per_core']:>12.1f}")
  with open(args.out, "w") as f:
    json.dump({"cores": cores, "load_average": list(load), "results": results}, f, indent=2)
  print(f"wrote {args.out}")
  return 0


COMMAND = cli.Command("python -m barlow_jax.benchmark input", define_flags, _command, __doc__)


def main(argv: list[str]) -> int:
  """The command line in-process: `argv[0]` is "input", then the flags."""
  return COMMAND(argv)


def _main_peer(args) -> int:
  load = os.getloadavg()
  core = pin_to_one_core()
  import tensorflow as tf

  tf.config.threading.set_inter_op_parallelism_threads(1)
  tf.config.threading.set_intra_op_parallelism_threads(1)
  result = run_peer(args.seconds, args.batch, args.repeats, natural_jpegs())
  print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
  print(peer_report(result, core, load))
  with open(args.out, "w") as f:
    json.dump({"core": core, "load_average": list(load), **result}, f, indent=2)
  print(f"wrote {args.out}")
  return 0

"""Side by side on one core: this project's two-view pipeline against the reference's PIL transform.

    python -m barlow_jax.benchmark input --peer=pil [--seconds 3] [--repeats 3] [--batch 32]

Both make two 224 px views with the reference augmentations from the same JPEG bytes (the input
benchmark's ImageNet-like 400x350 images), in one process pinned to one CPU core: this project's
`tf.data` pipeline (`input_pipeline.two_view_fn`, batched, tf.data and TensorFlow limited to one
thread) and `pil_peer` (torchvision's semantics on PIL images, one DataLoader worker's work).
Rates are examples (both views) per second of CPU time the process used, so other jobs on a
shared machine slow the wall clock but not the comparison; each case is measured `repeats`
times, interleaved, and the median is reported. Per-op costs are the difference in ms per
example between the full pipeline and the same pipeline with that op's probability set to 0.
"""

import gc
import os
import statistics
import time

import numpy as np

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
  from barlow_jax.benchmarks import input as input_benchmark

  iterator = make_iterator()
  result = input_benchmark.measure(iterator, batch, cpu_seconds, 2, clock=time.process_time)
  del iterator
  gc.collect()  # Ends the dataset's threads before the next case runs.
  return result["examples_per_s"]


def _config(*zero_keys: str, on_device: bool = False, size: int = 224):
  from barlow_jax import config as config_lib

  config = config_lib.base_config()
  config.dataset.image_size = size
  config.augment.on_device = on_device
  for view in (config.augment.view_a, config.augment.view_b):
    for key in zero_keys:
      view[key] = 0.0
  return config


def run(seconds: float, batch: int, repeats: int, encoded: list[bytes], size: int = 224) -> dict:
  """Medians over `repeats` interleaved measurements; see the module docstring.

  Args:
    seconds: CPU seconds per measurement. batch: examples per batch.
    repeats: measurements per case. encoded: JPEG bytes. size: output side of the views.
  """
  import tensorflow as tf

  from barlow_jax.benchmarks import input as input_benchmark
  from barlow_jax.benchmarks import pil_peer

  def ours(config):
    def make():
      return input_benchmark.bytes_dataset(config, encoded, batch, threads=1)

    return make

  cases = {FULL: ours(_config(size=size)), HOST_PART: ours(_config(on_device=True, size=size))}
  for name, keys in WITHOUT.items():
    cases[f"without {name}"] = ours(_config(*keys, size=size))
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


def report(result: dict, core: int, load) -> str:
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

  from barlow_jax.benchmarks import input as input_benchmark

  images = input_benchmark.natural_images(n, height, width)
  return [tf.io.encode_jpeg(np.asarray(x), quality=90).numpy() for x in images]

"""Batch sizes, process shards and the tf.data options every pipeline of the package shares.

Multi-host: process p of P reads its own shard (an even split of the examples, or
`tfds.split_for_jax_process`) and yields config.batch_size // P examples per step; the trainer
assembles global arrays with `jax.make_array_from_process_local_data`.
"""

import os

import tensorflow as tf

try:  # TensorFlow must never take an accelerator from jax; every pipeline module imports this one.
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # Devices were already initialised (then this was done by whoever did it).
  pass


def process_defaults(process_index, process_count) -> tuple[int, int]:
  """(process_index, process_count), jax's where None.

  Raises:
    ValueError: when process_index is not in [0, process_count).
  """
  if process_index is None or process_count is None:
    import jax

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(
      f"process_index must be in [0, process_count), got {process_index} of {process_count}."
    )
  return int(process_index), int(process_count)


def check_batch_size(config, num_devices: int, num_processes: int) -> int:
  """Checks that the global batch splits evenly; returns the per-process batch.

  Raises:
    ValueError: naming `config.batch_size` when it is not positive or not divisible by the
      number of processes or of devices.
  """
  batch = int(config.batch_size)
  per_process = local_batch(batch, num_processes)
  if batch % num_devices:
    raise ValueError(
      f"config.batch_size={batch} is not divisible by the number of devices ({num_devices}); "
      f"use a multiple of {num_devices}."
    )
  return per_process


def local_batch(batch_size: int, process_count: int, key: str = "config.batch_size") -> int:
  """The per-process share of a global batch; a ValueError naming `key` when it does not split."""
  if batch_size <= 0:
    raise ValueError(f"{key} must be positive, got {batch_size}.")
  if batch_size % process_count:
    raise ValueError(
      f"{key}={batch_size} is not divisible by the number of processes ({process_count}); "
      f"use a multiple of {process_count}."
    )
  return batch_size // process_count


def shard_bounds(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[start, end) of process `process_index`'s even shard of `num_examples` examples."""
  return (
    num_examples * process_index // process_count,
    num_examples * (process_index + 1) // process_count,
  )


def options(config=None) -> tf.data.Options:
  """The tf.data options of every pipeline here (deterministic, parallel, one thread per op).

  They read no setting: `config` is accepted and ignored."""
  options = tf.data.Options()
  options.deterministic = True  # Resumability needs the same order every time.
  # One thread per op and parallelism across examples, as the flax / big_vision pipelines do.
  options.threading.max_intra_op_parallelism = 1
  options.experimental_optimization.map_parallelization = True
  options.experimental_optimization.parallel_batch = True
  # No autotuning model thread: deleting an iterator joins that thread, which in TF 2.21 can miss
  # the cancellation's wake-up (it re-checks before the cancellation is marked done) and then
  # sleeps out its optimisation period, up to 60 s. Measured on the default job: 0-53 s between
  # the results table and the end of `train_and_evaluate`, in C++ ~RootDataset::Iterator. Without
  # the model, AUTOTUNE parallelism is min(initial_parallelism, cores): set to every core, the
  # ceiling autotune climbs to (its CPU budget); the prefetch buffers keep their own autotuner.
  options.autotune.enabled = False
  options.autotune.initial_parallelism = _cores()
  del config
  return options


def _cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not on Linux.
    return os.cpu_count() or 1


def num_parallel_calls(config) -> int:
  """`config.dataset.num_parallel_calls`, with a negative value meaning tf.data's AUTOTUNE."""
  return parallel_calls(int(config.dataset.num_parallel_calls))


def parallel_calls(n: int) -> int:
  """A map's parallelism `n` for tf.data: a negative value means AUTOTUNE."""
  return tf.data.AUTOTUNE if int(n) < 0 else int(n)

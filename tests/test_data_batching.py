"""barlow_jax.data.batching: the tf.data options every pipeline shares."""

import os

from barlow_jax.config import base_config
from barlow_jax.data import batching


def test_pipelines_run_without_tf_data_autotuning_thread_at_full_parallelism():
  """Deleting an iterator joins TF's autotuning thread, which can sleep out its period (up to
  60 s) after a missed wake-up (issue 14, item 10: the default job's exit delay); AUTOTUNE
  parallelism then comes from `initial_parallelism`, which must be every core, not TF's 16."""
  options = batching.options(base_config())
  assert options.autotune.enabled is False
  assert options.autotune.initial_parallelism == len(os.sched_getaffinity(0))
  assert options.deterministic is True

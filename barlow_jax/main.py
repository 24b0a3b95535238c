r"""Pretrains Barlow Twins from a config file into a workdir; the same command resumes.

    python -m barlow_jax.main --config=configs/cluttered_digits.py --workdir=workdirs/cd
    python -m barlow_jax.main --config=configs/cifar10_resnet18.py:runlocal --workdir=/tmp/c10 \
        --config.batch_size=64 --config.optim.lr_weights=0.3

`--config=FILE[:ARG]` loads `get_config(ARG)` from FILE; `--config.KEY=VALUE` overrides one key
(the config is locked: a misspelt key is an error naming it). Several processes (TPU pod,
multi-node GPU, `python -m barlow_jax.launch`) join through `barlow_jax.launch.initialize` first.
"""

import logging as std_logging

from absl import app, flags, logging
from ml_collections import config_flags

from barlow_jax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  "config",
  None,
  "Experiment config file, e.g. configs/cluttered_digits.py[:runlocal].",
  lock_config=True,
)
flags.DEFINE_string("workdir", None, "Directory of the run: config, checkpoints, metrics, export.")
flags.DEFINE_string(
  "coordinator_address", "", "host:port of process 0 (multi-process runs; default: environment)."
)
flags.DEFINE_integer("num_processes", 0, "Processes of a multi-process run (0: environment).")
flags.DEFINE_integer("process_id", -1, "This process's index (-1: environment).")
flags.DEFINE_bool(
  "distributed",
  False,
  "Join a multi-host job with jax's cluster detection (Cloud TPU pods; SLURM and Open MPI jobs "
  "of several tasks are detected without it).",
)
flags.mark_flags_as_required(["config", "workdir"])


class _QuietOrbax(std_logging.Filter):
  """Drops orbax's INFO lines (a dozen per checkpoint); its warnings and errors still show."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_logger().addFilter(_QuietOrbax())
  config = cli.loaded_config(FLAGS)  # A config file that did not load: one line, before jax.
  # Imported here so a flag error (a misspelt --config. key) fails in a second, not after jax.
  from barlow_jax import launch

  launch.initialize(
    FLAGS.coordinator_address,
    FLAGS.num_processes,
    FLAGS.process_id,
    cluster_detection=FLAGS.distributed,
  )

  import jax

  from barlow_jax import train

  logging.info(
    "Process %d/%d, %d local devices of %d: %s",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.devices()[0].device_kind,
  )
  result = train.train_and_evaluate(config, FLAGS.workdir)
  signal_name = result.stop_signal or "SIGTERM"
  if result.preempted and result.step < result.total_steps:
    logging.info(
      "Stopped at step %d/%d on %s; rerun to resume.", result.step, result.total_steps, signal_name
    )
  elif result.preempted:
    logging.info("Stopped during the final evaluation on %s; rerun to finish it.", signal_name)


def run() -> None:
  """The `barlow-jax` console script (setup.py's entry point): the same as `python -m
  barlow_jax.main`; `--help` exits 0 (`barlow_jax.cli.parse_flags`)."""
  import sys

  argv = list(sys.argv)

  def body(rest):
    with cli.reporting_user_errors("python -m barlow_jax.main", argv):
      main(rest)

  app.run(body, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()

"""Evaluation: kNN monitor, linear probe, semi-supervised fine-tuning and the default job's table.

docs/reference.md §5 gives the protocols. Everything here reads a frozen backbone as a flax module
plus its variables `{"params", "batch_stats"}` (eval-mode BatchNorm), from wherever it comes from: a
pretraining workdir, a `backbone/` export, or a converted PyTorch checkpoint (`load_backbone`).

Two linear-probe protocols:

- "reference": the published protocol. Every epoch re-augments the training images (random
  resized crop + flip), pushes them through the frozen backbone and trains one linear layer
  (weights N(0, 0.01), bias 0; SGD momentum 0.9, lr 0.3 per 256 examples, weight decay 1e-6,
  batch 256, cosine, 100 epochs); eval on resize + centre crop; top-1 / top-5.
- "features": extracts eval-preprocessed features once, standardises them with the training
  mean/std, and trains the same linear layer with the same optimizer on them. Much cheaper (the
  backbone runs once), and what the small in-memory datasets use. It differs from "reference" in
  two ways: no augmentation of the probe's training images, and standardised features.

The code lives in `barlow_jax.evaluation` (metrics, knn, features, linear_probe, finetune,
baselines, final_table, modes, transfer, voc07); this module is the command line and re-exports
the public names it has always had, so `barlow_jax.evaluate.X` keeps working.

Command line (results.json + results.md in the workdir):

  python -m barlow_jax.evaluate --config=configs/eval_linear.py \
      --config.eval.backbone=workdirs/cluttered_digits --workdir=workdirs/eval_linear
"""

from typing import Any

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from barlow_jax import checkpointing, cli, config_validation
from barlow_jax.config_validation import UserError
from barlow_jax.evaluation.baselines import recalibrate_batch_stats
from barlow_jax.evaluation.features import (
  array_batches,
  backbone_variables,
  create_backbone,
  extract_features,
  init_backbone,
  load_backbone,
  topk_accuracy,
)
from barlow_jax.evaluation.final_table import (
  STANDARDISED_PIXELS,
  results_markdown,
  run_final_evaluation,
  write_results,
)
from barlow_jax.evaluation.finetune import (
  classifier_accuracy,
  finetune,
  random_batches,
  random_crop_flip,
  select_subset,
)
from barlow_jax.evaluation.knn import knn_accuracy
from barlow_jax.evaluation.linear_probe import (
  LinearProbe,
  linear_probe_accuracy,
  probe_kwargs_from_config,
  reference_linear_probe,
  train_linear_probe,
)
from barlow_jax.evaluation.modes import knn_evaluation, linear_evaluation, semisup_evaluation
from barlow_jax.models import Classifier

__all__ = [
  "STANDARDISED_PIXELS",
  "Classifier",
  "LinearProbe",
  "array_batches",
  "backbone_variables",
  "classifier_accuracy",
  "create_backbone",
  "crop_flip_config",  # noqa: F822  (module __getattr__)
  "evaluate",
  "extract_features",
  "finetune",
  "init_backbone",
  "knn_accuracy",
  "knn_evaluation",
  "linear_evaluation",
  "linear_probe_accuracy",
  "load_backbone",
  "probe_kwargs_from_config",
  "random_batches",
  "random_crop_flip",
  "recalibrate_batch_stats",
  "reference_linear_probe",
  "results_markdown",
  "run_final_evaluation",
  "select_subset",
  "semisup_evaluation",
  "topk_accuracy",
  "train_linear_probe",
  "write_results",
]


def __getattr__(name: str) -> Any:
  # The data side's pipeline module loads TensorFlow: its name here loads on first use.
  if name == "crop_flip_config":
    from barlow_jax.data import pretrain

    return pretrain.crop_flip_config
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs `config.eval.mode` ("linear", "semisup", "knn", "transfer") on `config.eval.backbone`.

  Everything the evaluation reads or writes is checked before the backbone loads: every key of
  the rule tables, the evaluation preprocessing, the backbone location, the workdir, and every
  split the mode reads (`preflight.check_evaluation`: present, labelled, at least a batch).

  Raises:
    UserError: naming the config key, flag or path to change.
  """
  if not config.eval.backbone:
    raise UserError(
      "config.eval.backbone is empty: give a pretraining workdir, a backbone/ export or a "
      "converted PyTorch checkpoint directory (--config.eval.backbone=DIR)"
    )
  from barlow_jax import preflight
  from barlow_jax.data import evaluation as eval_data
  from barlow_jax.evaluation import transfer

  modes = {"linear": linear_evaluation, "semisup": semisup_evaluation, "knn": knn_evaluation}
  modes["transfer"] = transfer.transfer_evaluation
  config_validation.validate(config)
  # Before the probe trains: a bad resize setting would otherwise fail at the first test batch.
  try:
    eval_data.eval_preprocessing(config)
  except ValueError as e:
    raise UserError(str(e)) from None
  _check_backbone_location(str(config.eval.backbone))
  checkpointing.check_output_dir(workdir, "--workdir")
  preflight.check_evaluation(config)
  return modes[config.eval.mode](config, workdir)


def _check_backbone_location(location: str) -> None:
  """What `evaluation.features.load_backbone` accepts, checked without reading it."""
  path = checkpointing.path(location)
  if not path.is_dir():
    what = "a file" if path.exists() else "missing"
    raise UserError(
      f"config.eval.backbone={location!r} is {what}: give a pretraining workdir, its backbone/ "
      "export, or a directory written by `python -m barlow_jax.convert --from X.pth --to DIR`."
    )
  names = (checkpointing.MODEL_CONFIG_FILE, checkpointing.BACKBONE, checkpointing.CHECKPOINTS)
  if not any((path / name).exists() for name in names):
    raise UserError(
      f"config.eval.backbone={location!r} holds neither {checkpointing.MODEL_CONFIG_FILE} (a "
      "backbone export or converted PyTorch checkpoint), nor backbone/ or checkpoints/ (a "
      "pretraining workdir). Convert PyTorch weights with `python -m barlow_jax.convert --from "
      "X.pth --to DIR`."
    )


def define_flags(flag_values: flags.FlagValues) -> None:
  """The command line's flags (`barlow_jax.cli.Command`). Defined only when it runs: train.py
  imports this module under main.py's own --config / --workdir flags."""
  config_flags.DEFINE_config_file(
    "config",
    None,
    "Evaluation config, e.g. configs/eval_linear.py.",
    flag_values=flag_values,
    lock_config=True,
  )
  flags.DEFINE_string(
    "workdir", None, "Where results.json / results.md go.", flag_values=flag_values
  )
  flags.mark_flags_as_required(["config", "workdir"], flag_values=flag_values)


def _command(flag_values: flags.FlagValues, argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  evaluate(flag_values.config, flag_values.workdir)


COMMAND = cli.Command("python -m barlow_jax.evaluate", define_flags, _command, __doc__)

if __name__ == "__main__":
  COMMAND.run()

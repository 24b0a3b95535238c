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
baselines, final_table, modes, transfer, voc07); this module is the command line. The public names
it re-exported before still work with a DeprecationWarning naming their home (`_DEPRECATED`,
removed in 0.3).

Command line (results.json + results.md in the workdir):

  python -m barlow_jax.evaluate --config=configs/eval_linear.py \
      --config.eval.backbone=workdirs/cluttered_digits --workdir=workdirs/eval_linear
"""

from typing import Any

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from barlow_jax import checkpointing, cli, config_validation
from barlow_jax._deprecations import deprecation_getattr
from barlow_jax.config_validation import UserError

# The names this command line re-exported before `barlow_jax.evaluation` owned them
# (removed in 0.3).
_DEPRECATED = {
  "array_batches": "barlow_jax.evaluation.features.array_batches",
  "backbone_variables": "barlow_jax.evaluation.features.backbone_variables",
  "Classifier": "barlow_jax.models.Classifier",
  "classifier_accuracy": "barlow_jax.evaluation.finetune.classifier_accuracy",
  "create_backbone": "barlow_jax.evaluation.features.create_backbone",
  "crop_flip_config": "barlow_jax.data.pretrain.crop_flip_config",
  "extract_features": "barlow_jax.evaluation.features.extract_features",
  "finetune": "barlow_jax.evaluation.finetune.finetune",
  "init_backbone": "barlow_jax.evaluation.features.init_backbone",
  "knn_accuracy": "barlow_jax.evaluation.knn.knn_accuracy",
  "knn_evaluation": "barlow_jax.evaluation.modes.knn_evaluation",
  "linear_evaluation": "barlow_jax.evaluation.modes.linear_evaluation",
  "linear_probe_accuracy": "barlow_jax.evaluation.linear_probe.linear_probe_accuracy",
  "LinearProbe": "barlow_jax.evaluation.linear_probe.LinearProbe",
  "load_backbone": "barlow_jax.evaluation.features.load_backbone",
  "probe_kwargs_from_config": "barlow_jax.evaluation.linear_probe.probe_kwargs_from_config",
  "random_batches": "barlow_jax.evaluation.finetune.random_batches",
  "random_crop_flip": "barlow_jax.evaluation.finetune.random_crop_flip",
  "recalibrate_batch_stats": "barlow_jax.evaluation.baselines.recalibrate_batch_stats",
  "reference_linear_probe": "barlow_jax.evaluation.linear_probe.reference_linear_probe",
  "results_markdown": "barlow_jax.evaluation.final_table.results_markdown",
  "run_final_evaluation": "barlow_jax.evaluation.final_table.run_final_evaluation",
  "select_subset": "barlow_jax.evaluation.finetune.select_subset",
  "semisup_evaluation": "barlow_jax.evaluation.modes.semisup_evaluation",
  "STANDARDISED_PIXELS": "barlow_jax.evaluation.final_table.STANDARDISED_PIXELS",
  "topk_accuracy": "barlow_jax.evaluation.features.topk_accuracy",
  "train_linear_probe": "barlow_jax.evaluation.linear_probe.train_linear_probe",
  "write_results": "barlow_jax.evaluation.final_table.write_results",
}
__getattr__ = deprecation_getattr(__name__, _DEPRECATED)

__all__ = ["evaluate"]


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
  from barlow_jax.evaluation import modes as modes_lib
  from barlow_jax.evaluation import transfer

  modes = {
    "linear": modes_lib.linear_evaluation,
    "semisup": modes_lib.semisup_evaluation,
    "knn": modes_lib.knn_evaluation,
    "transfer": transfer.transfer_evaluation,
  }
  config_validation.validate(config)  # eval.mode among the string keys.
  # Before the probe trains: a bad resize setting would otherwise fail at the first test batch.
  try:
    eval_data.eval_preprocessing(config)
  except ValueError as e:
    raise UserError(str(e)) from None
  if config.eval.mode == "transfer":  # Its settings before any split is opened.
    try:
      transfer.validate_config(config)
    except UserError:
      raise
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
  evaluate(cli.loaded_config(flag_values), flag_values.workdir)


COMMAND = cli.Command("python -m barlow_jax.evaluate", define_flags, _command, __doc__)

if __name__ == "__main__":
  COMMAND.run()

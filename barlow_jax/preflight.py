"""What a run or an evaluation will read later, checked before its first step or backbone load.

A pretraining run reads its training split at once, but its probe and eval splits only at the
kNN monitor (`config.eval_every_steps`) and in the final table (`config.eval.final`), and a
standalone evaluation reads them only after loading the backbone. A missing split, an
unlabelled one, or one smaller than a batch drawn whole from it would then fail at the end,
after the work. `check_pretraining` / `check_evaluation` open every split the job will read
(each source kind lists or describes its split; nothing is decoded beyond what the source kind
checks on opening) and compare sizes against batch sizes, raising a `UserError` that names the
config key to change.
"""

import dataclasses
from collections.abc import Sequence

import ml_collections

from barlow_jax import data
from barlow_jax.config_validation import UserError


@dataclasses.dataclass(frozen=True)
class Need:
  """One split a job will read.

  Attributes:
    key: the `config.dataset` key naming the split ("train_split", "probe_split", "eval_split").
    reader: who reads it, and the setting that turns the reader on, for the message.
    off: how to turn the reader off ("" when it cannot be).
    labels: the reader needs class labels.
    batch_key: a config key (dotted, no "config.") of a batch drawn whole from the split, the
      remainder dropped: the split must hold at least one.
  """

  key: str
  reader: str
  off: str = ""
  labels: bool = True
  batch_key: str = ""


def _get(config, dotted: str):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def check(config: ml_collections.ConfigDict, needs: Sequence[Need]) -> None:
  """Opens every split of `needs` and checks its labels and size.

  Raises:
    UserError: naming the `config.dataset.*_split` key (or the batch key) to change, the value,
      who reads it, and how to turn that reader off.
  """
  for need in needs:
    where = f"config.dataset.{need.key}"
    split = config.dataset[need.key]
    fix = f"set {where} to a split the dataset has"
    if need.off:
      fix += f", or turn {need.reader.split(' (')[0]} off ({need.off})"
    if not split:
      raise UserError(f"{where} is empty, but {need.reader} reads it: {fix}.")
    try:
      source = data.open_source(config, split)
    except UserError:
      raise
    except ValueError as e:
      raise UserError(
        f"{where}={split!r}: {need.reader} reads it, but it cannot be opened: {e} Fix: {fix}."
      ) from None
    if need.labels and not source.has_labels:
      raise UserError(
        f"{where}={split!r} has no labels (config.dataset.label_key="
        f"{config.dataset.label_key!r}), but {need.reader} needs them: {fix}."
      )
    if need.batch_key:
      batch, n = int(_get(config, need.batch_key)), source.num_examples
      if batch > n:
        raise UserError(
          f"config.{need.batch_key}={batch} is larger than the {n} examples of {where}="
          f"{split!r}, which {need.reader} reads in whole batches: lower config.{need.batch_key} "
          f"to at most {n}."
        )


def pretraining_needs(config: ml_collections.ConfigDict, *, knn_monitor: bool) -> list[Need]:
  """The splits a pretraining run reads after its first step: the kNN monitor's (when
  `knn_monitor`, see `evaluation.knn.monitor_enabled`) and the final table's
  (`config.eval.final`)."""
  needs = []
  if knn_monitor:
    reader = f"the kNN monitor (config.eval_every_steps={config.eval_every_steps})"
    off = "config.eval_every_steps=0"
    needs += [Need("probe_split", reader, off), Need("eval_split", reader, off)]
  if config.eval.final:
    reader = "the final evaluation (config.eval.final=True)"
    off = "config.eval.final=False"
    needs += [Need("probe_split", reader, off), Need("eval_split", reader, off)]
  return needs


def check_pretraining(config: ml_collections.ConfigDict, *, knn_monitor: bool) -> None:
  """`check` of `pretraining_needs`, and the training split against `num_train_examples`.

  Raises:
    UserError: naming the key to change.
  """
  n = data.open_source(config, config.dataset.train_split).num_examples
  if config.num_train_examples > n:
    raise UserError(
      f"config.num_train_examples={config.num_train_examples} exceeds the {n} examples of "
      f"config.dataset.train_split={config.dataset.train_split!r}: set it to at most {n}, or "
      "to -1 (all the examples of the split)."
    )
  check(config, pretraining_needs(config, knn_monitor=knn_monitor))


def evaluation_needs(config: ml_collections.ConfigDict) -> list[Need]:
  """The splits `evaluate` reads for `config.eval.mode` (every mode: probe and eval splits;
  the reference linear protocol draws whole batches of `config.eval.probe_batch_size`; the
  ImageNet semi-supervised subsets replace the probe split)."""
  ev = config.eval
  reader = f"the {ev.mode} evaluation (config.eval.mode={ev.mode!r})"
  # Multi-label transfer reads per-object labels (config.transfer.objects_key), checked by
  # `evaluation.transfer.validate_config`, not a class label.
  labels = not (ev.mode == "transfer" and config.transfer.task == "multi_label")
  needs = [Need("probe_split", reader, labels=labels), Need("eval_split", reader, labels=labels)]
  protocol = ev.probe_protocol
  if protocol == "auto":
    protocol = "features" if data.fits_in_memory(config.dataset.name) else "reference"
  if ev.mode == "linear" and protocol == "reference":
    reader = "the reference linear probe (config.eval.probe_protocol)"
    needs.append(Need("probe_split", reader, batch_key="eval.probe_batch_size"))
  if ev.mode == "semisup" and ev.semisup_subset:
    needs = [Need("eval_split", reader)]  # It trains on TFDS imagenet2012_subset, not probe_split.
  return needs


def check_evaluation(config: ml_collections.ConfigDict) -> None:
  """`check` of `evaluation_needs`: before the backbone loads.

  Raises:
    UserError: naming the key to change.
  """
  check(config, evaluation_needs(config))

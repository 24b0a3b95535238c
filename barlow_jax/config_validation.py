"""What every numeric config key accepts, checked in one place before anything compiles.

`NUMERIC_KEYS` maps each numeric key of `config.base_config()` (dotted, without the leading
"config.") to a `Rule`: its type, its valid range and, where the key has one, its documented
sentinel (`-1` = unset / automatic, `0` = off). A value that is neither the sentinel nor in the
range is refused with a `ValueError` that names the key, e.g. `num_train_steps=0` (the run
length is either unset, -1, or a positive step count; 0 used to fall back to `num_epochs`).

`validate_numbers(config)` is called by `validate_pretraining`, by
`optim.create_schedules` (for the `optim` keys) and by `evaluate.evaluate` (standalone evaluation).
`validate_pretraining(config)` is the one check of a pretraining config: the numbers, plus what
involves the environment or the model (the batch against the device count, the projector and
backbone, the on-device augmentation). Checks tied to one owner's derived values (the warmup
against the run length, an evaluation resize against the crop) stay with their owners.
"""

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax

from barlow_jax import models
from barlow_jax.data import device_augment


@dataclasses.dataclass(frozen=True)
class Rule:
  """The values one numeric key accepts.

  Attributes:
    low, high: bounds of the valid range (None = unbounded); floats must also be finite.
    low_open, high_open: exclude the bound itself.
    integer: the value must be an integer.
    sentinel: a value outside the range that is accepted anyway, with its meaning `sentinel_means`.
    hint: said after the range in the error ("0 = off").
    length: the key holds a tuple of this many numbers (each checked); `ordered`: (min, max).
    any_length: the key holds a non-empty tuple of any length (each number checked).
    label, note: text after the key's name / after the value in the error.
  """

  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  integer: bool = False
  sentinel: int | None = None
  sentinel_means: str = ""
  hint: str = ""
  length: int | None = None
  any_length: bool = False
  ordered: bool = False
  label: str = ""
  note: str = ""

  def requirement(self) -> str:
    if self.low is not None and self.high is not None:
      left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
      text = f"in {left}{_fmt(self.low)}, {_fmt(self.high)}{right}"
    elif self.low is not None:
      text = f"{'>' if self.low_open else '>='} {_fmt(self.low)}"
    elif self.high is not None:
      text = f"{'<' if self.high_open else '<='} {_fmt(self.high)}"
    else:
      text = "an integer" if self.integer else "a finite number"
    if self.hint:
      text += f" ({self.hint})"
    if self.sentinel is not None:
      text = f"{self.sentinel} ({self.sentinel_means}) or {text}"
    if self.any_length:
      text = f"a non-empty sequence of numbers, each {text}"
    if self.length is not None:
      what = "(min, max) pair" if self.ordered and self.length == 2 else f"{self.length} numbers"
      text = f"a {what}, each {text}" + (" and min <= max" if self.ordered else "")
    return text

  def accepts_number(self, value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
      return False
    if self.sentinel is not None and value == self.sentinel:
      return True
    if not math.isfinite(value) or (self.integer and value != int(value)):
      return False
    if self.low is not None and not (value > self.low if self.low_open else value >= self.low):
      return False
    return self.high is None or (value < self.high if self.high_open else value <= self.high)

  def accepts(self, value: Any) -> bool:
    if self.any_length:
      ok = isinstance(value, tuple | list) and len(value) > 0
      return ok and all(self.accepts_number(v) for v in value)
    if self.length is None:
      return self.accepts_number(value)
    if not isinstance(value, tuple | list) or len(value) != self.length:
      return False
    if not all(self.accepts_number(v) for v in value):
      return False
    return not self.ordered or all(a <= b for a, b in zip(value, value[1:]))


def _fmt(x: float) -> str:
  return str(int(x)) if float(x).is_integer() else str(x)


_STEPS = Rule(low=1, integer=True)
_COUNT = Rule(low=1, integer=True)
_PROBABILITY = Rule(low=0, high=1)
_FRACTION_OPEN = Rule(low=0, high=1, high_open=True)  # Momenta, Adam's betas.
_NON_NEGATIVE = Rule(low=0)
_POSITIVE = Rule(low=0, low_open=True)
_UNSET = "unset"


def _view_rules(view: str) -> dict[str, Rule]:
  """The augmentation keys of one view (`barlow_jax.config.view_config`)."""
  p = f"augment.{view}."
  rules = {
    p + "crop_area": Rule(low=0, high=1, low_open=True, length=2, ordered=True),
    p + "crop_aspect": Rule(low=0, low_open=True, length=2, ordered=True),
    p + "blur_sigma": Rule(low=0, low_open=True, length=2, ordered=True),
    p + "hue": Rule(low=0, high=0.5, hint="a fraction of a full turn"),
    p + "solarize_threshold": _PROBABILITY,
  }
  for key in ("brightness", "contrast", "saturation", "noise_std"):
    rules[p + key] = _NON_NEGATIVE
  for key in ("flip", "jitter", "grayscale", "blur", "solarize", "channel_permute"):
    rules[p + key + "_prob"] = _PROBABILITY
  return rules


NUMERIC_KEYS: Mapping[str, Rule] = {
  "seed": Rule(integer=True),
  "dataset.image_size": _COUNT,
  "dataset.eval_resize": Rule(
    low=1, integer=True, sentinel=0, sentinel_means="no resize before the centre crop"
  ),
  "dataset.shuffle_buffer": _COUNT,
  "dataset.num_parallel_calls": Rule(
    low=1, integer=True, sentinel=-1, sentinel_means="tf.data.AUTOTUNE"
  ),
  "dataset.prefetch": _COUNT,
  "augment.mean": Rule(length=3),
  "augment.std": Rule(low=0, low_open=True, length=3),
  **_view_rules("view_a"),
  **_view_rules("view_b"),
  "model.width": _POSITIVE,
  "model.input_epsilon": _NON_NEGATIVE,
  "model.bn_momentum": _PROBABILITY,
  "model.bn_epsilon": _POSITIVE,
  "loss.lambd": _NON_NEGATIVE,
  "loss.eps": _NON_NEGATIVE,
  "loss.temperature": _POSITIVE,
  "optim.lr_weights": _NON_NEGATIVE,
  "optim.lr_biases": _NON_NEGATIVE,
  "optim.weight_decay": _NON_NEGATIVE,
  "optim.momentum": _FRACTION_OPEN,
  "optim.eta": Rule(low=0, low_open=True, label=" (LARS trust coefficient)"),
  "optim.b1": _FRACTION_OPEN,
  "optim.b2": _FRACTION_OPEN,
  "optim.adam_eps": _POSITIVE,
  "optim.warmup_epochs": _NON_NEGATIVE,
  "optim.end_lr_factor": _NON_NEGATIVE,
  "optim.gradient_scale": Rule(
    low=0,
    low_open=True,
    note=" (1.0 = the true gradient; 1/W reproduces the reference's W-GPU run)",
  ),
  "parallel.fsdp_min_size": Rule(low=0, integer=True, hint="0 = off: every leaf replicated"),
  "batch_size": _COUNT,
  "num_epochs": _NON_NEGATIVE,  # 0 epochs without num_train_steps: optim.total_train_steps.
  "num_train_steps": Rule(
    low=1, integer=True, sentinel=-1, sentinel_means=f"{_UNSET}: num_epochs sets the run length"
  ),
  "num_train_examples": Rule(
    low=1, integer=True, sentinel=-1, sentinel_means=f"{_UNSET}: the training split's size"
  ),
  "log_every_steps": _STEPS,
  "checkpoint_every_steps": _STEPS,
  "keep_checkpoints": _COUNT,
  "image_every_steps": Rule(low=0, integer=True, hint="0 = off"),
  "eval_every_steps": Rule(low=0, integer=True, hint="0 = off"),
  "online_probe_lr": _POSITIVE,
  "eval.knn_k": _COUNT,
  "eval.knn_temperature": _POSITIVE,
  "eval.probe_epochs": _COUNT,
  "eval.probe_batch_size": _COUNT,
  "eval.probe_lr": _POSITIVE,
  "eval.probe_momentum": _FRACTION_OPEN,
  "eval.probe_weight_decay": _NON_NEGATIVE,
  "eval.bn_recalibration_batches": _COUNT,
  "eval.checkpoint_step": Rule(
    low=0, integer=True, sentinel=-1, sentinel_means="the backbone/ export, else the latest"
  ),
  "eval.semisup_fraction": Rule(low=0, high=1, low_open=True),
  "eval.semisup_seed": Rule(integer=True),
  "eval.semisup_epochs": _COUNT,
  "eval.semisup_batch_size": _COUNT,
  "eval.semisup_lr_backbone": _NON_NEGATIVE,
  "eval.semisup_lr_head": _POSITIVE,
  "eval.semisup_weight_decay": _NON_NEGATIVE,
  "transfer.batch_size": _COUNT,
  "transfer.svm_costs": Rule(low=0, low_open=True, any_length=True),
  "transfer.svm_folds": Rule(low=2, integer=True, hint="k-fold cross-validation"),
  "transfer.svm_positive_weight": _POSITIVE,
  "transfer.svm_max_iter": _COUNT,
  "transfer.svm_jobs": Rule(low=1, integer=True, sentinel=-1, sentinel_means="all cores"),
}


def error_message(key: str, value: Any) -> str:
  """The error for `config.<key> = value` outside `NUMERIC_KEYS[key]`."""
  rule = NUMERIC_KEYS[key]
  return f"config.{key}{rule.label} must be {rule.requirement()}, got {value}{rule.note}."


def validate_numbers(config, *, section: str = "") -> None:
  """Checks every numeric key of `config` (those under `section`, e.g. "optim", if given).

  Keys missing from `config` are skipped (callers may hold a partial config).

  Raises:
    ValueError: naming the first key whose value is neither valid nor its sentinel, with the
      accepted values, e.g. "config.num_train_steps must be -1 (unset: ...) or >= 1, got 0.".
  """
  for key in NUMERIC_KEYS:
    if section and not key.startswith(section + "."):
      continue
    node = config
    for part in key.split("."):
      if part not in node:
        break
      node = node[part]
    else:
      if not NUMERIC_KEYS[key].accepts(node):
        raise ValueError(error_message(key, node))


def validate_pretraining(config) -> None:
  """Fails fast, before anything compiles, on pretraining settings the run cannot work with.

  The global batch against this run's devices and processes, the projector, backbone, stem and
  dtype, the on-device augmentation, and every numeric key (`validate_numbers`). The dataset
  (steps per epoch) and the optimizer are checked where they are built, also before compiling.

  Raises:
    ValueError: naming the config key and the fix.
  """
  batch, devices, processes = int(config.batch_size), jax.device_count(), jax.process_count()
  if batch < 1:
    raise ValueError(f"config.batch_size must be >= 1, got {batch}.")
  if batch % devices:
    raise ValueError(
      f"config.batch_size={batch} (the global batch) must be divisible by the {devices} devices "
      f"of this run; use a multiple of {devices}, e.g. {max(devices, batch // devices * devices)}."
    )
  if batch % processes:
    raise ValueError(
      f"config.batch_size={batch} must be divisible by the {processes} processes of this run."
    )
  models.parse_projector_sizes(config.model.projector)
  if not NUMERIC_KEYS["parallel.fsdp_min_size"].accepts(config.parallel.fsdp_min_size):
    raise ValueError(error_message("parallel.fsdp_min_size", config.parallel.fsdp_min_size))
  models.backbone_features(config.model)  # Unknown backbone / stem / dtype: ValueError.
  device_augment.validate_config(config)
  validate_numbers(config)  # Every numeric key: its range or its sentinel.

"""What every numeric and enumerated string config key accepts: the rule table, checked once.

`NUMERIC_KEYS` maps each numeric key of `config.base_config()` (dotted, without the leading
"config.") to a `Rule`: its type, its valid range and, where the key has one, its documented
sentinel (`-1` = unset / automatic, `0` = off). A value that is neither the sentinel nor in the
range is refused naming the key, e.g. `num_train_steps=0` (the run length is either unset, -1, or
a positive step count). `STRING_KEYS` maps each string key with a closed set of values (or a
layer-size string like the projector's) to a `Choice`.

`validate(config)` checks both tables; `validate_numbers` / `validate_strings` one of them (or one
section). Every error is a `UserError` (a ValueError): the command lines print its message alone
and exit 1 (`barlow_jax.cli`).

This module imports nothing of the project (importing `barlow_jax.optim`, which checks its
section here, loads neither flax nor the models). The checks that need the model or the devices
are `train_setup.validate_pretraining`; those tied to one owner's derived values (the warmup
against the run length, an evaluation resize against the crop) stay with their owners.
"""

import dataclasses
import math
import warnings
from collections.abc import Mapping
from typing import Any


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
  # Added to each image's deviation under model.standardize_input: 0 divides a blank image by 0.
  "model.input_epsilon": _POSITIVE,
  # Flax's momentum: 1.0 would keep the running statistics at their initial values forever.
  "model.bn_momentum": _FRACTION_OPEN,
  "model.bn_epsilon": _POSITIVE,
  "loss.lambd": _NON_NEGATIVE,
  "loss.eps": Rule(
    low=0, low_open=True, hint="added to each feature's variance: 0 gives NaN on a dead feature"
  ),
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
  "optim.spike_factor": Rule(
    low=1, low_open=True, sentinel=0, sentinel_means="off: only non-finite steps are skipped"
  ),
  "optim.spike_window": Rule(low=1, integer=True, hint="accepted losses in the running median"),
  "optim.max_consecutive_skips": Rule(
    low=1, integer=True, hint="skipped steps in a row that stop the run"
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


# ---------------------------------------------------------------------------------------------
# String keys: a closed set of values, or layer sizes "a-b-c".


class UserError(ValueError):
  """A setting or path the user can fix: the command lines print its message alone and exit 1.

  The message names the config key or flag, the value, where it came from, and the fix.
  """


@dataclasses.dataclass(frozen=True)
class Choice:
  """The values one string key accepts: one of `values`, or (`sizes`) positive integers joined
  by '-' ("8192-8192-8192"); `note` is said after the accepted values in the error."""

  values: tuple[str, ...] = ()
  sizes: bool = False
  note: str = ""

  def accepts(self, value: Any) -> bool:
    if not isinstance(value, str):
      return False
    if value in self.values:
      return True
    if not self.sizes:
      return False
    parts = value.split("-")
    return all(p.isdigit() and int(p) > 0 for p in parts)

  def requirement(self) -> str:
    text = "one of " + ", ".join(repr(v) for v in self.values) if self.values else ""
    if self.sizes:
      sizes = "positive layer sizes joined by '-', e.g. '8192-8192-8192'"
      text = f"{text} or {sizes}" if text else sizes
    return text + self.note


_RESIZE = Choice(("bilinear", "bicubic"))  # data.crop.RESIZE_METHODS

# Each tuple is its owner's list (named in the comment); tests/test_config_validation.py checks
# they agree, so this table imports nothing of the project.
STRING_KEYS: Mapping[str, Choice] = {
  "dataset.eval_interpolation": _RESIZE,
  "augment.view_a.crop_method": _RESIZE,
  "augment.view_b.crop_method": _RESIZE,
  # resnet.BACKBONES
  "model.backbone": Choice(("ResNet18", "ResNet34", "ResNet50", "ResNet101", "ResNet152")),
  "model.stem": Choice(("imagenet", "cifar")),
  "model.dtype": Choice(("float32", "bfloat16", "float16")),
  "model.projector": Choice(sizes=True),
  "model.predictor": Choice(
    ("", "auto"), sizes=True, note=" ('' = none, 'auto' = two layers of the embedding size)"
  ),
  # losses.VARIANTS, losses.METHODS
  "loss.variant": Choice(
    (
      "barlow_twins",
      "invariance_only",
      "redundancy_only",
      "feature_norm",
      "cross_covariance",
      "cross_entropy",
      "auto_correlation",
    )
  ),
  "loss.method": Choice(("auto", "dense", "gram", "blockwise")),
  # optim.OPTIMIZERS, optim.SCHEDULES
  "optim.name": Choice(("lars", "sgd", "adamw", "lamb")),
  "optim.schedule": Choice(("warmup_cosine", "cosine", "constant")),
  "eval.probe_protocol": Choice(("auto", "features", "reference")),
  "eval.supervised_match": Choice(("time", "steps")),
  "eval.mode": Choice(("linear", "semisup", "knn", "transfer")),
  "eval.semisup_subset": Choice(
    ("", "1pct", "10pct"), note=" ('' = a fraction of the probe split)"
  ),
  "transfer.task": Choice(("single_label", "multi_label")),  # evaluation.transfer.TASKS
}


def string_error_message(key: str, value: Any) -> str:
  """The error for `config.<key> = value` outside `STRING_KEYS[key]`, with the closest value."""
  import difflib

  choice = STRING_KEYS[key]
  text = f"config.{key}={value!r} is not accepted: use {choice.requirement()}."
  close = difflib.get_close_matches(str(value), [v for v in choice.values if v], n=1)
  if close:
    text += f" Did you mean --config.{key}={close[0]}?"
  return text


def _leaves(config, keys: Mapping[str, Any], section: str):
  for key in keys:
    if section and not key.startswith(section + "."):
      continue
    node = config
    for part in key.split("."):
      if part not in node:
        break
      node = node[part]
    else:
      yield key, node


def validate_numbers(config, *, section: str = "") -> None:
  """Checks every numeric key of `config` (those under `section`, e.g. "optim", if given).

  Keys missing from `config` are skipped (callers may hold a partial config).

  Raises:
    UserError: naming the first key whose value is neither valid nor its sentinel, with the
      accepted values, e.g. "config.num_train_steps must be -1 (unset: ...) or >= 1, got 0.".
  """
  for key, value in _leaves(config, NUMERIC_KEYS, section):
    if not NUMERIC_KEYS[key].accepts(value):
      raise UserError(error_message(key, value))


def validate_strings(config, *, section: str = "") -> None:
  """Checks every enumerated string key of `config` (those under `section`, if given).

  Raises:
    UserError: naming the first key whose value is not accepted, with the accepted values.
  """
  for key, value in _leaves(config, STRING_KEYS, section):
    if not STRING_KEYS[key].accepts(value):
      raise UserError(string_error_message(key, value))


def validate(config) -> None:
  """Every key of the rule tables: `validate_strings`, then `validate_numbers`.

  Raises:
    UserError: naming the first key at fault.
  """
  validate_strings(config)
  validate_numbers(config)


def __getattr__(name: str):
  # The pretraining check needs the model and the device count: it lives with the run's setup.
  # (barlow_jax._deprecations' message, written out: this module imports nothing of the project.)
  if name == "validate_pretraining":
    warnings.warn(
      "barlow_jax.config_validation.validate_pretraining is deprecated and will be removed in "
      "barlow_jax 0.3: use barlow_jax.train_setup.validate_pretraining instead (CHANGELOG.md).",
      DeprecationWarning,
      stacklevel=2,
    )
    import importlib

    return importlib.import_module("barlow_jax.train_setup").validate_pretraining
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

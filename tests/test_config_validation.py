"""Every numeric and enumerated string config key: valid values pass, anything else is refused
by name, before anything compiles.

The sweep walks `config_validation.NUMERIC_KEYS`, which must cover every numeric key of the schema
and of every shipped config, and sends each key's out-of-range values through the real entry
points (`train_setup.validate_pretraining`, `optim.create_optimizer`, `evaluate.evaluate`). The
sweep derives its values from the rules, so a loosened rule would pass it: fixed tables of
values that must be refused, and ones that must pass, hold the ranges and the string sets.
"""

import importlib.util
import math
import os
import subprocess
import sys

import configs_tiny
import pytest

from barlow_jax import config as config_lib
from barlow_jax import config_validation, evaluate, losses, optim, resnet, train_setup
from barlow_jax.data import crop
from barlow_jax.evaluation import transfer, voc07

RULES = config_validation.NUMERIC_KEYS
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIGS = ("imagenet_resnet50", "cifar10_resnet18", "cluttered_digits", "digits")


def _load(name, arg=None):
  path = os.path.join(_ROOT, "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _shipped_configs():
  yield "base", config_lib.base_config()
  yield "tiny", configs_tiny.get_config()
  for name in _CONFIGS:
    for arg in (None, "runlocal"):
      yield f"{name}:{arg}", _load(name, arg)
  yield "eval_linear", _load("eval_linear", "digits")
  yield "eval_semisup", _load("eval_semisup")


def _numeric_leaves(node, prefix=""):
  for key, value in node.items():
    path = f"{prefix}{key}"
    if hasattr(value, "items"):
      yield from _numeric_leaves(value, path + ".")
    elif isinstance(value, tuple | list) and all(isinstance(v, int | float) for v in value):
      yield path
    elif isinstance(value, int | float) and not isinstance(value, bool):
      yield path


def _set(config, dotted, value):
  *parents, leaf = dotted.split(".")
  node = config
  for parent in parents:
    node = node[parent]
  node[leaf] = value
  return config


def _number_invalid(rule):
  """Values just outside the range (never the sentinel), and non-finite ones for floats."""
  step = 1 if rule.integer else 1e-3
  out = []
  if rule.low is not None:
    out.append(rule.low if rule.low_open else rule.low - step)
  if rule.high is not None:
    out.append(rule.high if rule.high_open else rule.high + step)
  if rule.sentinel is not None:
    out = [v for v in out if v != rule.sentinel] + [rule.sentinel - 1]
  if not rule.integer:
    out += [math.nan, math.inf]
  return [int(v) if rule.integer else float(v) for v in out]


def _invalid(rule, default):
  if rule.any_length:
    return [()] + [(v,) + tuple(default[1:]) for v in _number_invalid(rule)]
  if rule.length is None:
    return _number_invalid(rule)
  out = [tuple(default) + (default[-1],)]  # One entry too many.
  out += [(v,) + tuple(default[1:]) for v in _number_invalid(rule)]
  if rule.ordered:
    out.append((default[1] + 0.1, default[1]) if rule.high is None else (1.0, 0.5))
  return out


def _cases():
  base = config_lib.base_config()
  for key, rule in RULES.items():
    default = _get(base, key)
    for value in _invalid(rule, default):
      yield pytest.param(key, value, id=f"{key}={value}")


def _get(config, dotted):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def test_the_rules_cover_every_numeric_key_of_every_shipped_config():
  base_keys = set(_numeric_leaves(config_lib.base_config()))
  assert base_keys == set(RULES), (base_keys - set(RULES), set(RULES) - base_keys)
  for name, config in _shipped_configs():
    assert set(_numeric_leaves(config)) <= set(RULES), name
    config_validation.validate_numbers(config)


def test_only_the_seeds_accept_every_integer():
  unbounded = {key for key, rule in RULES.items() if not _invalid(rule, _get_default(key))}
  assert unbounded == {"seed", "eval.semisup_seed"}


def _get_default(key):
  return _get(config_lib.base_config(), key)


# device_augment.validate_config checks the normalisation first, naming both keys at once.
_ALSO_NAMED_AS = {"augment.std": r"|config\.augment\.mean and std"}


@pytest.mark.parametrize("key, value", list(_cases()))
def test_an_invalid_value_is_refused_naming_the_key(devices, key, value):
  assert not RULES[key].accepts(value)
  config = _set(config_lib.base_config(), key, value)
  with pytest.raises(ValueError, match=rf"config\.{key}\b" + _ALSO_NAMED_AS.get(key, "")):
    train_setup.validate_pretraining(config)


@pytest.mark.parametrize(
  "key, value",
  [
    ("num_train_steps", -1),
    ("num_train_steps", 1),
    ("num_train_examples", -1),
    ("num_train_examples", 1),
    ("dataset.num_parallel_calls", -1),
    ("dataset.num_parallel_calls", 1),
    ("dataset.eval_resize", 0),
    ("eval.checkpoint_step", -1),
    ("eval.checkpoint_step", 0),
    ("image_every_steps", 0),
    ("eval_every_steps", 0),
    ("optim.momentum", 0.0),
    ("model.bn_momentum", 0.0),
    ("eval.semisup_fraction", 1.0),
    ("augment.view_b.hue", 0.5),
  ],
)
def test_the_sentinel_and_the_closed_bounds_are_accepted(devices, key, value):
  train_setup.validate_pretraining(_set(config_lib.base_config(), key, value))


def test_zero_train_steps_is_refused_not_read_as_unset(devices):
  config = _set(config_lib.base_config(), "num_train_steps", 0)
  with pytest.raises(ValueError, match=r"config\.num_train_steps must be -1 \(unset.*\) or >= 1"):
    train_setup.validate_pretraining(config)


def test_the_optimizer_and_the_standalone_evaluation_check_their_keys(tmp_path):
  config = _set(config_lib.base_config(), "optim.b2", 1.0)
  with pytest.raises(ValueError, match=r"config\.optim\.b2 must be in \[0, 1\), got 1\.0\."):
    optim.create_optimizer(config, 10)
  config = _set(_load("eval_linear", "digits"), "eval.knn_k", 0)
  # Refused before the (missing) backbone directory is even looked at.
  config.eval.backbone = str(tmp_path / "no_such_backbone")
  with pytest.raises(ValueError, match=r"config\.eval\.knn_k must be >= 1, got 0\."):
    evaluate.evaluate(config, str(tmp_path / "eval"))


# Values that must be refused and values that must pass, written out by hand (never derived from
# the rules): a loosened rule fails here.
REFUSED_NUMBERS = [
  ("model.bn_momentum", 1.0),  # Flax's running statistics would never move.
  ("model.bn_momentum", -0.1),
  ("loss.eps", 0.0),  # NaN loss on a dead feature.
  ("loss.eps", -1e-5),
  ("model.input_epsilon", 0.0),  # NaN on a blank image under standardize_input.
  ("model.input_epsilon", -0.2),
  ("optim.momentum", 1.0),
  ("optim.momentum", -0.1),
  ("eval.knn_temperature", 0.0),
  ("eval.knn_temperature", -0.1),
  ("eval.probe_momentum", 1.0),
  ("optim.b2", 1.0),
  ("batch_size", 0),
  ("num_train_steps", 0),
  ("num_train_examples", 0),
  ("eval.semisup_fraction", 0.0),
  ("augment.view_a.hue", 0.6),
  ("augment.view_b.solarize_prob", 1.5),
  ("loss.lambd", -0.1),
  ("loss.temperature", 0.0),
  ("model.width", 0.0),
]
ACCEPTED_NUMBERS = [
  ("model.bn_momentum", 0.0),
  ("model.bn_momentum", 0.999),
  ("loss.eps", 1e-12),
  ("model.input_epsilon", 1e-6),
  ("optim.momentum", 0.0),
  ("optim.momentum", 0.999),
  ("eval.knn_temperature", 0.01),
  ("loss.lambd", 0.0),
  ("num_train_steps", -1),
]
REFUSED_STRINGS = [
  ("loss.variant", "barlow_twin"),
  ("loss.method", "dens"),
  ("eval.supervised_match", "step"),
  ("model.predictor", "zz"),
  ("model.predictor", "64-"),
  ("model.projector", "zz"),
  ("model.projector", "0-64"),
  ("model.backbone", "resnet50"),
  ("model.stem", "imagenet1k"),
  ("model.dtype", "fp32"),
  ("optim.name", "adam"),
  ("optim.schedule", "linear"),
  ("eval.probe_protocol", "ref"),
  ("eval.mode", "lin"),
  ("eval.semisup_subset", "1%"),
  ("transfer.task", "multi"),
  ("dataset.eval_interpolation", "nearest"),
  ("augment.view_a.crop_method", "area"),
  ("augment.view_b.crop_method", "bicubic "),
]
ACCEPTED_STRINGS = [
  ("model.predictor", ""),
  ("model.predictor", "auto"),
  ("model.predictor", "64-8192"),
  ("model.projector", "64-64"),
  ("loss.variant", "cross_entropy"),
  ("loss.method", "blockwise"),
  ("eval.supervised_match", "steps"),
  ("dataset.eval_interpolation", "bicubic"),
  ("model.dtype", "float32"),
]
# String keys whose values are open (names, paths, splits, feature keys).
OPEN_STRING_KEYS = {
  "dataset.name",
  "dataset.data_dir",
  "dataset.folder",
  "dataset.train_split",
  "dataset.class_subset",  # A packaged class list's name or a file of class names.
  "dataset.eval_split",
  "dataset.probe_split",
  "dataset.image_key",
  "dataset.label_key",
  "eval.backbone",
  "transfer.objects_key",
  "transfer.object_label_key",
  "transfer.object_difficult_key",
}


@pytest.mark.parametrize("key, value", REFUSED_NUMBERS + REFUSED_STRINGS)
def test_a_fixed_table_of_values_is_refused_naming_its_own_key(devices, key, value):
  config = _set(config_lib.base_config(), key, value)
  with pytest.raises(config_validation.UserError, match=rf"^config\.{key}\b"):
    train_setup.validate_pretraining(config)


@pytest.mark.parametrize("key, value", ACCEPTED_NUMBERS + ACCEPTED_STRINGS)
def test_a_fixed_table_of_values_is_accepted(devices, key, value):
  config = _set(config_lib.base_config(), key, value)
  if key == "model.predictor" and value not in ("", "auto"):
    config.model.projector = "64-8192"  # A predictor ends in the embedding size.
  train_setup.validate_pretraining(config)


def test_a_misspelt_string_names_the_closest_value():
  config = _set(config_lib.base_config(), "loss.variant", "barlow_twin")
  with pytest.raises(ValueError, match=r"Did you mean --config\.loss\.variant=barlow_twins\?"):
    config_validation.validate_strings(config)


def test_every_string_key_is_in_the_table_or_declared_open():
  strings = set()

  def visit(node, prefix=""):
    for key, value in node.items():
      if hasattr(value, "items"):
        visit(value, f"{prefix}{key}.")
      elif isinstance(value, str):
        strings.add(f"{prefix}{key}")

  visit(config_lib.base_config())
  assert strings == set(config_validation.STRING_KEYS) | OPEN_STRING_KEYS, strings ^ (
    set(config_validation.STRING_KEYS) | OPEN_STRING_KEYS
  )
  for _name, config in _shipped_configs():
    config_validation.validate_strings(config)


def test_the_string_sets_are_their_owners_lists():
  # The table imports nothing of the project: its copies must equal the owners' lists.
  keys = config_validation.STRING_KEYS
  assert keys["loss.variant"].values == losses.VARIANTS
  assert keys["loss.method"].values == losses.METHODS
  assert keys["optim.name"].values == optim.OPTIMIZERS
  assert keys["optim.schedule"].values == optim.SCHEDULES
  assert keys["model.backbone"].values == tuple(resnet.BACKBONES)
  assert keys["transfer.task"].values == transfer.TASKS
  for key in ("dataset.eval_interpolation", "augment.view_a.crop_method"):
    assert keys[key].values == crop.RESIZE_METHODS
  assert config_lib.base_config().transfer.svm_costs == voc07.VOC07_COSTS


def test_a_late_string_is_refused_before_the_evaluation_loads_anything(tmp_path):
  config = _set(_load("eval_linear", "digits"), "eval.supervised_match", "step")
  config.eval.backbone = str(tmp_path / "no_such_backbone")
  with pytest.raises(config_validation.UserError, match=r"config\.eval\.supervised_match='step'"):
    evaluate.evaluate(config, str(tmp_path / "eval"))


def test_importing_the_optimizer_loads_neither_flax_nor_the_models():
  code = (
    "import sys, barlow_jax.optim; "
    "print(sorted(m for m in sys.modules if m.split('.')[0] == 'flax' "
    "or m in ('barlow_jax.models', 'barlow_jax.resnet', 'barlow_jax.data')))"
  )
  out = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
  )
  assert out.stdout.strip() == "[]", out.stdout


def test_the_old_name_of_validate_pretraining_warns_naming_its_new_home():
  with pytest.warns(DeprecationWarning, match=r"barlow_jax\.train_setup\.validate_pretraining"):
    old = config_validation.validate_pretraining
  assert old is train_setup.validate_pretraining

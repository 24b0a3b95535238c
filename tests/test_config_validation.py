"""Every numeric config key: its sentinel and its range pass, anything else is refused by name.

The sweep walks `config_validation.NUMERIC_KEYS`, which must cover every numeric key of the schema
and of every shipped config, and sends each key's out-of-range values through the real entry
points (`config_validation.validate_pretraining`, `optim.create_optimizer`, `evaluate.evaluate`).
"""

import importlib.util
import math
import os

import configs_tiny
import pytest

from barlow_jax import config as config_lib
from barlow_jax import config_validation, evaluate, optim

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
    config_validation.validate_pretraining(config)


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
    ("model.bn_momentum", 1.0),
    ("eval.semisup_fraction", 1.0),
    ("augment.view_b.hue", 0.5),
  ],
)
def test_the_sentinel_and_the_closed_bounds_are_accepted(devices, key, value):
  config_validation.validate_pretraining(_set(config_lib.base_config(), key, value))


def test_zero_train_steps_is_refused_not_read_as_unset(devices):
  config = _set(config_lib.base_config(), "num_train_steps", 0)
  with pytest.raises(ValueError, match=r"config\.num_train_steps must be -1 \(unset.*\) or >= 1"):
    config_validation.validate_pretraining(config)


def test_the_optimizer_and_the_standalone_evaluation_check_their_keys(tmp_path):
  config = _set(config_lib.base_config(), "optim.b2", 1.0)
  with pytest.raises(ValueError, match=r"config\.optim\.b2 must be in \[0, 1\), got 1\.0\."):
    optim.create_optimizer(config, 10)
  config = _set(_load("eval_linear", "digits"), "eval.knn_k", 0)
  # Refused before the (missing) backbone directory is even looked at.
  config.eval.backbone = str(tmp_path / "no_such_backbone")
  with pytest.raises(ValueError, match=r"config\.eval\.knn_k must be >= 1, got 0\."):
    evaluate.evaluate(config, str(tmp_path / "eval"))

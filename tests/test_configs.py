"""The experiment configs: they load, validate on 8 devices, and say what their docstrings say."""

import importlib.util
import math
import os

import pytest
from absl import flags
from ml_collections import config_flags

from barlow_jax import config_validation, models, optim

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ("imagenet_resnet50", "cifar10_resnet18", "cluttered_digits", "digits")
# Training examples, for steps_per_epoch without touching the (possibly absent) TFDS data.
EXAMPLES = {"imagenet2012": 1_281_167, "cifar10": 50_000, "cluttered_digits": 7185, "digits": 1437}


def load(name: str, arg: str | None = None):
  path = os.path.join(_ROOT, "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module, module.get_config(arg)


@pytest.mark.parametrize("arg", [None, "runlocal"])
@pytest.mark.parametrize("name", NAMES)
def test_every_config_validates_and_builds_its_optimizer(devices, name, arg):
  module, config = load(name, arg)
  assert "python -m barlow_jax.main --config=configs/" in module.__doc__
  assert ":runlocal" in module.__doc__
  config_validation.validate_pretraining(config)
  examples = config.num_train_examples if config.num_train_examples > 0 else None
  examples = examples or EXAMPLES[config.dataset.name]
  steps_per_epoch = examples // config.batch_size
  optim.create_optimizer(config, steps_per_epoch)
  assert optim.total_train_steps(config, steps_per_epoch) >= 1


@pytest.mark.parametrize("name", NAMES)
def test_an_unknown_argument_is_an_error(name):
  with pytest.raises(ValueError, match="nonsense"):
    load(name, "nonsense")


def test_imagenet_is_the_reference_run():
  _, c = load("imagenet_resnet50")
  assert (c.batch_size, c.num_epochs, c.num_train_steps) == (2048, 1000.0, -1)
  assert (c.optim.name, c.optim.lr_weights, c.optim.lr_biases) == ("lars", 0.2, 0.0048)
  assert (c.optim.weight_decay, c.optim.momentum, c.optim.eta) == (1e-6, 0.9, 0.001)
  assert (c.optim.schedule, c.optim.warmup_epochs, c.optim.end_lr_factor) == (
    "warmup_cosine",
    10.0,
    0.001,
  )
  assert c.optim.scale_lr_by_batch and c.optim.gradient_scale == 1.0
  assert c.loss.lambd == 0.0051 and c.loss.variant == "barlow_twins"
  assert (c.model.backbone, c.model.stem, c.model.projector) == (
    "ResNet50",
    "imagenet",
    "8192-8192-8192",
  )
  assert c.model.dtype == "bfloat16" and c.model.zero_init_residual
  assert c.dataset.image_size == 224
  a, b = c.augment.view_a, c.augment.view_b
  assert (a.blur_prob, a.solarize_prob, b.blur_prob, b.solarize_prob) == (1.0, 0.0, 0.1, 0.2)
  for v in (a, b):
    assert v.crop_area == (0.08, 1.0) and v.flip_prob == 0.5 and v.jitter_prob == 0.8
    assert (v.brightness, v.contrast, v.saturation, v.hue, v.grayscale_prob) == (
      0.4,
      0.4,
      0.2,
      0.1,
      0.2,
    )
  assert c.augment.mean == (0.485, 0.456, 0.406)


def test_cifar10_is_the_small_image_recipe():
  _, c = load("cifar10_resnet18")
  assert (c.model.backbone, c.model.stem, c.dataset.image_size) == ("ResNet18", "cifar", 32)
  assert models.backbone_features(c.model) == 512
  a, b = c.augment.view_a, c.augment.view_b
  assert a.blur_prob == b.blur_prob == 0.0
  assert (a.solarize_prob, b.solarize_prob) == (0.0, 0.2)
  assert a.crop_area == b.crop_area == (0.08, 1.0)
  assert c.num_epochs == 1000.0 and c.batch_size == 256


def test_cluttered_digits_is_the_prototype_recipe():
  _, c = load("cluttered_digits")
  assert c.dataset.name == "cluttered_digits" and c.eval.final
  assert (c.model.backbone, c.model.stem, c.model.width) == ("ResNet18", "cifar", 0.25)
  assert models.backbone_features(c.model) == 128  # Stages 16-32-64-128.
  assert c.model.projector == "512-512-512"
  assert (c.optim.name, c.optim.lr_weights, c.batch_size, c.num_train_steps) == (
    "adamw",
    2e-3,
    128,
    900,
  )
  assert c.model.standardize_input and not c.model.zero_init_residual
  for v in (c.augment.view_a, c.augment.view_b):
    assert v.crop_area == (0.4, 1.0) and v.flip_prob == 0.0 and v.solarize_prob == 0.0
    assert (v.jitter_prob, v.brightness, v.contrast, v.saturation, v.hue) == (
      0.8,
      0.4,
      0.4,
      0.2,
      0.5,
    )
    assert v.channel_permute_prob > 0 and v.grayscale_prob == 0.2
    assert v.blur_prob == 0.5 and v.blur_sigma == (0.1, 1.0) and v.noise_std == 0.03
  assert math.isclose(c.augment.mean[0], 0.5, abs_tol=0.01)


def test_config_file_flag_overrides_and_refuses_misspelt_keys():
  path = os.path.join(_ROOT, "configs", "digits.py")

  def parse(*args):
    argv = ["prog", *args]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file(
      "config", None, "config", flag_values=values, lock_config=True, sys_argv=argv
    )
    values(argv)
    return values.config

  config = parse(f"--config={path}:runlocal", "--config.batch_size=64")
  assert config.batch_size == 64 and config.num_train_steps == 20
  with pytest.raises((AttributeError, KeyError, flags.Error), match="batch_sise"):
    parse(f"--config={path}", "--config.batch_sise=64")

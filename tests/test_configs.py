"""The experiment configs: they load, validate on 8 devices, and say what their docstrings say."""

import importlib.util
import math
import os

import pytest
from absl import flags
from ml_collections import config_flags

from barlow_jax import config as config_lib
from barlow_jax import models, optim, train_setup

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = (
  "imagenet_resnet50",
  "cifar10_resnet18",
  "cifar100_resnet18",
  "imagenet100_resnet18",
  "stl10_resnet18",
  "imagenette_resnet18",
  "cluttered_digits",
  "digits",
)
RECIPES = NAMES[:6]  # The presets with a published anchor in their docstrings.
IMAGENET_VARIANTS = (
  "epochs=100",
  "epochs=300",
  "batch=128",
  "batch=4096",
  "projector=2048",
  "epochs=100,projector=8192",
)
# Training examples, for steps_per_epoch without touching the (possibly absent) TFDS data.
EXAMPLES = {
  "imagenet2012": 1_281_167,
  "imagenet2012:imagenet100": 100 * 1300,  # About 1300 a class; runs count the subset.
  "cifar10": 50_000,
  "cifar100": 50_000,
  "stl10": 100_000,
  "imagenette/160px-v2": 9469,
  "cluttered_digits": 7185,
  "digits": 1437,
}


def load(name: str, arg: str | None = None):
  path = os.path.join(_ROOT, "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module, module.get_config(arg)


@pytest.mark.parametrize(
  "name, arg",
  [(n, a) for n in NAMES for a in (None, "runlocal")]
  + [("imagenet_resnet50", v) for v in IMAGENET_VARIANTS]
  + [("imagenet_resnet50", v + ",runlocal") for v in IMAGENET_VARIANTS[:3]],
)
def test_every_config_validates_and_builds_its_optimizer(devices, name, arg):
  module, config = load(name, arg)
  assert "python -m barlow_jax.main --config=configs/" in module.__doc__
  assert ":runlocal" in module.__doc__
  train_setup.validate_pretraining(config)
  key = config.dataset.name
  if config.dataset.class_subset:
    key += ":" + config.dataset.class_subset
  examples = config.num_train_examples if config.num_train_examples > 0 else None
  examples = examples or EXAMPLES[key]
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


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_states_its_expected_result_and_source(name):
  doc = " ".join(load(name)[0].__doc__.split())
  assert "Expected, not measured here" in doc
  assert "github" in doc.lower() or "/" in doc  # A repository or paper to check it against.


def test_imagenet_variants_are_the_published_runs():
  module, c = load("imagenet_resnet50", "epochs=300")
  assert (c.num_epochs, c.batch_size, c.optim.lr_weights, c.optim.lr_biases) == (
    300.0,
    2048,
    0.2,
    0.0048,
  )
  # facebookresearch/barlowtwins#7, as the authors' table gives it.
  assert module.BATCH_SWEEP_300 == {
    128: (0.7, 69.7),
    256: (0.4, 70.7),
    512: (0.3, 71.4),
    1024: (0.25, 71.7),
    2048: (0.2, 71.4),
    4096: (0.2, 70.7),
  }
  for batch, (lr, top1) in module.BATCH_SWEEP_300.items():
    _, c = load("imagenet_resnet50", f"batch={batch}")
    assert (c.batch_size, c.num_epochs, c.optim.lr_weights) == (batch, 300.0, lr)
    assert math.isclose(c.optim.lr_biases, lr * 0.024)  # The runs' --scale-loss 0.024.
    assert f"{batch} / {lr} -> {top1}" in " ".join(module.__doc__.split()).replace("lr ", "")
  _, c = load("imagenet_resnet50", "epochs=100")  # solo-learn's ImageNet recipe.
  assert (c.num_epochs, c.batch_size, c.model.projector) == (100.0, 256, "4096-4096-4096")
  assert (c.optim.lr_weights, c.optim.lr_biases, c.optim.gradient_scale) == (0.8, 0.8, 0.048)
  assert c.optim.weight_decay == 1.5e-6
  with pytest.raises(ValueError, match="batch must be one of"):
    load("imagenet_resnet50", "batch=64")
  with pytest.raises(ValueError, match="300 epochs"):
    load("imagenet_resnet50", "batch=256,epochs=1000")


@pytest.mark.parametrize("width", [1024, 2048, 4096, 8192, 16384])
def test_the_projector_loss_scale_is_196_over_the_width(width):
  # barlowtwins#9: 196 / D, to two significant figures (0.024 at 8192, as the reference has it).
  scale = config_lib.projector_loss_scale(f"{width}-{width}-{width}")
  assert math.isclose(scale, 196.0 / width, rel_tol=0.03)
  assert scale == float(f"{196.0 / width:.2g}")
  _, c = load("imagenet_resnet50", f"projector={width}")
  assert c.model.projector == f"{width}-{width}-{width}"
  assert math.isclose(c.optim.lr_biases, 0.2 * scale) and c.optim.lr_weights == 0.2
  assert config_lib.projector_loss_scale("8192-8192-8192") == 0.024
  with pytest.raises(ValueError, match="positive width"):
    config_lib.projector_loss_scale("8192-8192-x")


def test_small_dataset_recipes_read_the_right_data():
  _, c100 = load("cifar100_resnet18")
  _, c10 = load("cifar10_resnet18")
  assert c100.dataset.name == "cifar100" and c100.augment.mean != c10.augment.mean
  assert (c100.optim.lr_weights, c100.optim.gradient_scale, c100.num_epochs) == (0.3, 0.1, 1000.0)
  _, in100 = load("imagenet100_resnet18")
  assert (in100.dataset.name, in100.dataset.class_subset) == ("imagenet2012", "imagenet100")
  assert (in100.model.backbone, in100.num_epochs, in100.batch_size) == ("ResNet18", 400.0, 256)
  _, stl = load("stl10_resnet18")
  assert stl.dataset.train_split == "unlabelled" and not stl.online_probe
  _, nette = load("imagenette_resnet18")
  assert (nette.dataset.image_size, nette.num_epochs, nette.eval.knn_k) == (128, 800.0, 200)

"""The paper's studies as sweeps: each a list of named runs, each run a set of config overrides.

A study is scale-free: the same overrides apply to the cluttered-digits default (`local` at half
its length, `cluttered` at full length), the plain digits (`digits`), the CIFAR-10 recipe (`cifar`)
or the ImageNet reference run (`imagenet`); only the sizes that must fit the scale (batch sizes,
projector widths) differ, and `SCALES` says how.

`paper` holds what the paper reports for the same setting (ImageNet, ResNet-50, 300 epochs, linear
top-1 %, docs/reference.md §6), so every results table can show ours next to theirs.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  overrides: Mapping[str, Any]
  paper: float | None = None  # The paper's ImageNet linear top-1 for this setting, if reported.
  x: float | None = None  # Abscissa for a plotted sweep (batch size, width, lambda).
  note: str = ""  # What the paper says of this setting when it gives no number.


@dataclasses.dataclass(frozen=True)
class Scale:
  config: str  # Config file the study's overrides apply to.
  config_arg: str  # Its argument (a small variant), "" for the default.
  batch_sizes: tuple[int, ...]
  widths: tuple[int, ...]
  # Widths of `projector_width_wide`: past the paper's 16384 at the imagenet scale, the
  # projector's parameters and optimizer state sharded over the devices (FSDP).
  wide_widths: tuple[int, ...]
  # Overrides every run of this scale gets, e.g. fewer steps so a whole study fits a session.
  common: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  # "FILE[:ARG]" of a standalone evaluation (`python -m barlow_jax.evaluate`) run after
  # pretraining into WORKDIR/linear_eval, for datasets the end-of-training table cannot hold in
  # memory (ImageNet); "" = the end-of-training evaluation (config.eval.final) writes the results.
  eval_config: str = ""


SCALES = {
  # The cluttered digits (configs/cluttered_digits.py: 7,185 training images, ResNet-18 at quarter
  # width, projector 512-512-512) at half the default job's length: 450 steps of batch 128 (8
  # epochs), about 3 minutes a run on 2 idle CPU cores, so that the loss, lambda and width studies
  # (20 runs) fit an hour. The default job's random-init and raw-pixel rows are the floor.
  "local": Scale(
    config="configs/cluttered_digits.py",
    config_arg="",
    batch_sizes=(32, 64, 128, 256),
    widths=(16, 64, 256, 512, 1024, 2048),
    wide_widths=(1024, 2048, 4096),
    common={
      "num_train_steps": 450,
      "eval.baselines": False,
      "eval.supervised": False,
      "eval_every_steps": 0,
    },
  ),
  # The offline default job at its full length (900 steps, ~5 minutes a run).
  "cluttered": Scale(
    config="configs/cluttered_digits.py",
    config_arg="",
    batch_sizes=(32, 64, 128, 256),
    widths=(16, 64, 256, 512, 1024, 2048),
    wide_widths=(1024, 2048, 4096),
    common={"eval.baselines": False, "eval.supervised": False},
  ),
  # The plain digits (configs/digits.py: 1,437 training images, projector 256-256-256), 100 steps
  # a run: a quick check that a study runs end to end (2.5 to 5 minutes a run on shared cores).
  # Too easy to rank losses by (raw pixels reach 95% linear).
  "digits": Scale(
    config="configs/digits.py",
    config_arg="",
    batch_sizes=(32, 64, 128, 256),
    widths=(16, 64, 256, 512, 1024, 2048),
    wide_widths=(1024, 2048, 4096),
    common={
      "num_train_steps": 100,
      "eval.baselines": False,
      "eval.supervised": False,
      "eval_every_steps": 0,
    },
  ),
  "cifar": Scale(
    config="configs/cifar10_resnet18.py",
    config_arg="",
    batch_sizes=(128, 256, 512, 1024, 2048),
    widths=(16, 128, 512, 1024, 2048, 4096, 8192),
    wide_widths=(8192, 16384, 32768),
  ),
  "imagenet": Scale(
    config="configs/imagenet_resnet50.py",
    config_arg="",
    batch_sizes=(128, 256, 512, 1024, 2048, 4096),
    widths=(16, 128, 512, 1024, 2048, 4096, 8192, 16384, 32768),
    wide_widths=(8192, 16384, 32768, 65536),
    # The paper's ablations are 300-epoch runs. The end-of-training table loads whole splits into
    # memory: ImageNet gets the published linear-probe protocol as its own job instead.
    common={"num_epochs": 300.0, "eval.final": False},
    eval_config="configs/eval_linear.py:imagenet_resnet50",
  ),
}


def _projector(width: int) -> str:
  return f"{width}-{width}-{width}"


def loss_ablation(scale: Scale) -> list[Run]:
  del scale
  return [
    Run("baseline", {}, paper=71.4),
    Run("invariance_only", {"loss.variant": "invariance_only"}, paper=57.3),
    Run("redundancy_only", {"loss.variant": "redundancy_only"}, paper=0.1),
    Run("feature_norm", {"loss.variant": "feature_norm"}, paper=69.8),
    Run("no_projector_bn", {"model.projector_batch_norm": False}, paper=71.2),
    Run(
      "cross_covariance",
      {"model.projector_batch_norm": False, "loss.variant": "cross_covariance"},
      paper=53.4,
    ),
    Run("cross_entropy", {"loss.variant": "cross_entropy"}, paper=63.3),
    Run(
      "auto_correlation",
      {"loss.variant": "auto_correlation"},
      note="paper (App. A): little difference from baseline, no number",
    ),
  ]


_PAPER_BATCH = {128: 69.7, 256: 70.7, 512: 71.4, 1024: 71.7, 2048: 71.4, 4096: 70.7}


def batch_size(scale: Scale) -> list[Run]:
  # Learning rates follow the reference's linear scaling (base * B / 256, optim.scale_lr_by_batch).
  return [
    Run(f"batch_{b}", {"batch_size": b}, paper=_PAPER_BATCH.get(b), x=b) for b in scale.batch_sizes
  ]


def projector_width(scale: Scale) -> list[Run]:
  runs = []
  for width in scale.widths:
    overrides: dict[str, Any] = {"model.projector": _projector(width)}
    if width >= 16384:
      overrides["loss.method"] = "gram"  # Never materialise the D x D matrix.
    runs.append(Run(f"width_{width}", overrides, x=width))
  return runs


# Leaves of at least 2**20 elements are sharded: every projector kernel of width >= 1024 and
# ResNet-50's widest convolutions; biases and BatchNorm vectors stay replicated.
WIDE_FSDP_MIN_SIZE = 2**20


def projector_width_wide(scale: Scale) -> list[Run]:
  # The paper's accuracy still rose at 16384 (its Fig. 4) where memory stopped it. At 65536 the
  # projector holds 8.7 billion parameters: 105 GB with LARS's momentum and the gradient,
  # replicated. FSDP (config.parallel.fsdp_min_size) splits them over the devices, and the Gram
  # form of the loss never builds the D x D matrix. The memory table: docs/benchmarks.md.
  return [
    Run(
      f"width_{width}",
      {
        "model.projector": _projector(width),
        "loss.method": "gram",
        "parallel.fsdp_min_size": WIDE_FSDP_MIN_SIZE,
      },
      x=width,
    )
    for width in scale.wide_widths
  ]


def lambda_sensitivity(scale: Scale) -> list[Run]:
  del scale
  return [
    Run(f"lambda_{lambd:g}", {"loss.lambd": lambd}, x=lambd)
    for lambd in (0.002, 0.0035, 0.0051, 0.0075, 0.01, 0.02)
  ]


def augmentation_removal(scale: Scale) -> list[Run]:
  del scale
  removals = {
    "no_crop": {"crop_area": (1.0, 1.0), "crop_aspect": (1.0, 1.0)},
    "no_flip": {"flip_prob": 0.0},
    "no_colour_jitter": {"jitter_prob": 0.0},
    "no_grayscale": {"grayscale_prob": 0.0},
    "no_blur": {"blur_prob": 0.0},
    "no_solarize": {"solarize_prob": 0.0},
  }
  runs = [Run("all_augmentations", {})]
  for name, fields in removals.items():
    overrides = {}
    for view in ("view_a", "view_b"):
      for field, value in fields.items():
        overrides[f"augment.{view}.{field}"] = value
    runs.append(Run(name, overrides))
  return runs


def asymmetry(scale: Scale) -> list[Run]:
  del scale
  return [
    Run("symmetric", {}, paper=71.4),
    Run("stop_gradient", {"model.stop_gradient_b": True}, paper=70.5),
    Run("predictor", {"model.predictor": "auto"}, paper=70.2),
    Run(
      "stop_gradient_and_predictor",
      {"model.stop_gradient_b": True, "model.predictor": "auto"},
      paper=61.3,
    ),
  ]


def reference(scale: Scale) -> list[Run]:
  # Not a paper study: the scale's baseline once more with the evaluation's reference rows (random
  # init, BN-recalibrated random init, raw pixels), the floor every other table is read against.
  del scale
  return [Run("baselines", {"eval.baselines": True, "eval.supervised": False})]


STUDIES = {
  "loss_ablation": loss_ablation,
  "batch_size": batch_size,
  "projector_width": projector_width,
  "projector_width_wide": projector_width_wide,
  "lambda": lambda_sensitivity,
  "augmentation_removal": augmentation_removal,
  "asymmetry": asymmetry,
  "reference": reference,
}

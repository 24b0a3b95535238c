r"""Semi-supervised fine-tuning of a saved backbone + linear head on a labelled subset.

The reference protocol (docs/reference.md §5): SGD momentum 0.9, two learning rates per 256
examples, backbone 0.005 (paper 0.002) and head 0.5, weight decay 0, cosine, 20 epochs, batch 256,
train-mode BatchNorm; top-1 / top-5 on the evaluation split.

`get_config("PRESET[,1pct|10pct][,runlocal]")` starts from `configs/PRESET.py` (default
`imagenet_resnet50`). For ImageNet the subset is TFDS `imagenet2012_subset/1pct` (default) or
`10pct` (the SimCLR lists, disjoint from the validation split), augmented with random resized
crop + flip. For the in-memory datasets (cluttered_digits, digits, cifar10/100) it is
`config.eval.semisup_fraction` (default 10%) of the probe split drawn with a fixed seed
(`semisup_seed`), class-balanced (`semisup_balanced`); evaluation on the held-out split.

    python -m barlow_jax.evaluate --config=configs/eval_semisup.py:imagenet_resnet50,1pct \
        --config.eval.backbone=/tmp/bt_r50 --workdir=/tmp/semisup_1pct
    python -m barlow_jax.evaluate --config=configs/eval_semisup.py:cluttered_digits \
        --config.eval.backbone=workdirs/cluttered_digits --workdir=workdirs/cd_semisup

`,runlocal` fine-tunes for 1 epoch (a smoke test of the path, not a result).
"""

import importlib


def get_config(arg: str | None = None):
  tokens = [t for t in (arg or "").split(",") if t]
  runlocal = "runlocal" in tokens
  subsets = [t for t in tokens if t in ("1pct", "10pct")]
  presets = [t for t in tokens if t not in ("runlocal", "1pct", "10pct")]
  if len(presets) > 1 or len(subsets) > 1:
    raise ValueError(f"configs/eval_semisup.py: bad argument {arg!r}")
  preset = presets[0] if presets else "imagenet_resnet50"
  try:
    module = importlib.import_module(f"configs.{preset}")
  except ModuleNotFoundError as e:
    raise ValueError(
      f"configs/eval_semisup.py: no pretraining config configs/{preset}.py (argument {arg!r})"
    ) from e
  config = module.get_config()
  config.eval.mode = "semisup"
  config.eval.final = False
  if subsets:
    config.eval.semisup_subset = subsets[0]
  elif config.dataset.name == "imagenet2012":
    config.eval.semisup_subset = "1pct"
  config.eval.semisup_epochs = 20
  config.eval.semisup_batch_size = 256
  config.eval.semisup_lr_backbone = 0.005
  config.eval.semisup_lr_head = 0.5
  config.eval.semisup_weight_decay = 0.0
  if runlocal:
    config.eval.semisup_epochs = 1
  return config

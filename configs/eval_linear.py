r"""Linear probe (and kNN) of a saved backbone: the published protocol by default.

`get_config("PRESET[,runlocal]")` starts from the pretraining config `configs/PRESET.py` (default
`imagenet_resnet50`), so the dataset, splits, image size and normalisation are the ones the
backbone was trained with; the architecture is read from the backbone directory itself.
`config.eval.backbone` is a pretraining workdir (its backbone/ export, or with
`--config.eval.checkpoint_step=N` a training checkpoint), an exported backbone directory, or a
converted PyTorch checkpoint (`python -m barlow_jax.convert --from resnet50.pth --to DIR`).

Protocol (`config.eval.probe_protocol`): "auto" picks "features" for in-memory datasets
(cluttered_digits, digits, cifar10/100: features extracted once, standardised; also reports kNN)
and "reference" otherwise (crop + flip re-augmented every epoch through the frozen backbone,
resize + centre crop eval). Both: SGD momentum 0.9, lr 0.3 per 256, weight decay 1e-6, batch 256,
cosine, 100 epochs; top-1 / top-5. Results: WORKDIR/results.json and results.md.

    # The reference's released ResNet-50 weights on ImageNet (73.5% top-1 published):
    python -m barlow_jax.convert --from resnet50.pth --to /tmp/bt_r50
    python -m barlow_jax.evaluate --config=configs/eval_linear.py \
        --config.eval.backbone=/tmp/bt_r50 \
        --config.dataset.data_dir=gs://YOUR_BUCKET/tensorflow_datasets --workdir=/tmp/eval_r50

    # The default job's backbone:
    python -m barlow_jax.evaluate --config=configs/eval_linear.py:cluttered_digits \
        --config.eval.backbone=workdirs/cluttered_digits --workdir=workdirs/cd_linear

`,runlocal` trains the probe for 2 epochs (a smoke test of the path, not a result).
"""

import importlib


def get_config(arg: str | None = None):
  tokens = [t for t in (arg or "").split(",") if t]
  runlocal = "runlocal" in tokens
  presets = [t for t in tokens if t != "runlocal"]
  if len(presets) > 1:
    raise ValueError(f"configs/eval_linear.py: one preset at most, got {presets}")
  preset = presets[0] if presets else "imagenet_resnet50"
  try:
    module = importlib.import_module(f"configs.{preset}")
  except ModuleNotFoundError as e:
    raise ValueError(
      f"configs/eval_linear.py: no pretraining config configs/{preset}.py (argument {arg!r})"
    ) from e
  config = module.get_config()
  config.eval.mode = "linear"
  config.eval.final = False
  config.eval.probe_protocol = "auto"
  config.eval.probe_epochs = 100
  config.eval.probe_batch_size = 256
  config.eval.probe_lr = 0.3
  config.eval.probe_weight_decay = 1e-6
  if runlocal:
    config.eval.probe_epochs = 2
  return config

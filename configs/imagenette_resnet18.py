r"""Imagenette, ResNet-18, 128 px, 800 epochs: lightly's benchmark setting.

TFDS `imagenette/160px-v2` (the 160 px Imagenette of fastai/imagenette: 10 easy ImageNet classes,
9,469 training and 3,925 validation images), crops of 128 px, a ResNet-18 with the ImageNet stem,
global batch 256, projector 2048-2048-2048, 800 epochs, and lightly's kNN evaluation (k = 200,
temperature 0.1, on the validation split at 128 px). The optimiser is the one lightly's stored
benchmark script gives Barlow Twins (lightly-ai/lightly,
docs/source/getting_started/benchmarks/imagenette_benchmark.py): SGD, lr 0.06 per 256,
momentum 0.9, weight decay 5e-4, cosine without warmup; here its weight decay spares biases and
BN, as every optimizer of this repository does. Augmentations: this repository's reference pair
(lightly uses its SimCLR transform).

    python -m barlow_jax.main --config=configs/imagenette_resnet18.py --workdir=workdirs/imagenette

Expected, not measured here: 85.2% kNN top-1 on the validation split (docs.lightly.ai,
"Benchmarks", ImageNette table: BarlowTwins, batch 256, 800 epochs, 0.852, 298.5 min on one A6000
GPU, about 5 GPU-hours). The script version whose optimiser is reproduced here reports 78.9%
for the same row (its results header, 5.3.2022); which settings produced the later 85.2% could not
be verified here, so 78.9 is the number this exact optimiser is known to reach.

Local variant (`:runlocal`): 2 steps of batch 16 at 64 px, float32, a quarter-width network:

    python -m barlow_jax.main --config=configs/imagenette_resnet18.py:runlocal --workdir=/tmp/inette
"""

from barlow_jax.config import base_config, shrink_for_local


def get_config(arg: str | None = None):
  config = base_config()
  config.dataset.name = "imagenette/160px-v2"
  config.dataset.train_split = "train"
  config.dataset.eval_split = "validation"
  config.dataset.probe_split = "train"
  config.dataset.image_size = 128
  config.dataset.eval_resize = 128  # lightly: Resize(128), CenterCrop(128).
  config.dataset.shuffle_buffer = 10_000

  config.model.backbone = "ResNet18"
  config.model.stem = "imagenet"
  config.model.width = 1.0
  config.model.projector = "2048-2048-2048"
  config.model.dtype = "bfloat16"

  config.loss.lambd = 0.0051

  config.optim.name = "sgd"
  config.optim.lr_weights = 0.06
  config.optim.lr_biases = 0.06
  config.optim.momentum = 0.9
  config.optim.weight_decay = 5e-4
  config.optim.schedule = "cosine"
  config.optim.warmup_epochs = 0.0
  config.optim.end_lr_factor = 0.0

  config.batch_size = 256
  config.num_epochs = 800.0
  config.log_every_steps = 36  # 36 steps per epoch.
  config.checkpoint_every_steps = 36 * 50
  config.image_every_steps = 36 * 50
  config.eval_every_steps = 36 * 50  # The kNN monitor: lightly's probe.
  config.eval.knn_k = 200
  config.eval.knn_temperature = 0.1
  config.online_probe = True

  if arg == "runlocal":
    shrink_for_local(config, image_size=64)
  elif arg:
    raise ValueError(f"configs/imagenette_resnet18.py: unknown argument {arg!r}; use 'runlocal'.")
  return config

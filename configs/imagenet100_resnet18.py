r"""ImageNet-100, ResNet-18, 400 epochs: solo-learn's recipe on its 100-class subset of ImageNet.

The data: TFDS `imagenet2012` restricted to the 100 classes of solo-learn's list
(`config.dataset.class_subset = "imagenet100"`, barlow_jax/data/class_lists/imagenet100.txt;
vturrisi/solo-learn solo/data/dataset_subset/imagenet100_classes.txt), relabelled 0..99, in the
training and the validation split alike. The subset's size is counted at start-up (a pass over the
labels of each split).

The recipe: vturrisi/solo-learn scripts/pretrain/imagenet-100/barlow.yaml: ResNet-18 (ImageNet
stem) at 224 px, the reference's asymmetric augmentations (blur 1.0 / 0.1, solarize 0 / 0.2),
global batch 256 (128 on each of 2 GPUs), LARS lr 0.3 per 256 for weights and biases alike, eta
0.02, weight decay 1e-4 (biases and BN excluded), warmup then cosine, lambda 0.0051, projector
2048-2048-2048, loss scale 0.1 (`gradient_scale`, as solo-learn multiplies the loss), an online
linear probe at lr 0.1, 400 epochs. solo-learn's lr clipping option (`clip_lr`) is not reproduced.

    python -m barlow_jax.main --config=configs/imagenet100_resnet18.py \
        --config.dataset.data_dir=gs://YOUR_BUCKET/tensorflow_datasets --workdir=gs://.../in100

Expected, not measured here: 80.38% top-1 of the online linear probe and 80.16% of the offline
linear probe (solo-learn README, ImageNet-100 table, Barlow Twins / ResNet18 / 400 epochs).
Accelerator hours: not published for this run.

Local variant (`:runlocal`): 2 steps of batch 16 at 64 px, float32, a quarter-width network:

    python -m barlow_jax.main --config=configs/imagenet100_resnet18.py:runlocal --workdir=/tmp/in100
"""

from barlow_jax.config import base_config, shrink_for_local, solo_learn_small_recipe


def get_config(arg: str | None = None):
  config = base_config()
  config.dataset.name = "imagenet2012"
  config.dataset.class_subset = "imagenet100"
  config.dataset.train_split = "train"
  config.dataset.eval_split = "validation"
  config.dataset.probe_split = "train"
  config.dataset.image_size = 224
  config.dataset.eval_resize = 256

  solo_learn_small_recipe(config, stem="imagenet")

  config.batch_size = 256
  config.num_epochs = 400.0
  # ~494 steps per epoch.
  config.log_every_steps = 100
  config.checkpoint_every_steps = 5000
  config.image_every_steps = 5000
  config.eval_every_steps = 0  # The offline probe is its own job (configs/eval_linear.py).
  config.online_probe = True
  config.online_probe_lr = 0.1
  config.eval.final = False  # The end-of-run table reads whole splits into memory.

  if arg == "runlocal":
    shrink_for_local(config, image_size=64)
    config.dataset.eval_resize = 73  # 256 / 224 of the crop, as at full size.
  elif arg:
    raise ValueError(f"configs/imagenet100_resnet18.py: unknown argument {arg!r}; use 'runlocal'.")
  return config

r"""ImageNet, ResNet-50, 1000 epochs: the reference run (docs/reference.md §3), 73.5% linear top-1.

Global batch 2048 over every device of every host; LARS (eta 0.001, momentum 0.9) with the two
learning rates 0.2 (weights) and 0.0048 (biases and BN) per 256 examples, warmup 10 epochs then
cosine to 0.001x; weight decay 1e-6; lambda 0.0051; projector 8192-8192-8192; the BYOL
augmentations per view; bfloat16 compute with float32 parameters and loss. The reference took
about 7 days on 16 V100s.

    python -m barlow_jax.main --config=configs/imagenet_resnet50.py \
        --config.dataset.data_dir=gs://YOUR_BUCKET/tensorflow_datasets --workdir=gs://.../bt_r50

`gradient_scale` stays 1.0 (the true gradient of the global loss). The reference's applied
gradient is 1/W of it (W = 16 GPUs); add `--config.optim.gradient_scale=0.0625` to reproduce
its dynamics exactly (docs/reference.md §3).

Local variant (`:runlocal`): the same network and optimizer on 2 steps of batch 16 at 64 px, to
check a machine and the data path:

    python -m barlow_jax.main --config=configs/imagenet_resnet50.py:runlocal --workdir=/tmp/r50
"""

from barlow_jax.config import base_config


def get_config(arg: str | None = None):
  config = base_config()  # Already the reference's values; restated here so the file says them.
  config.dataset.name = "imagenet2012"
  config.dataset.train_split = "train"
  config.dataset.eval_split = "validation"
  config.dataset.probe_split = "train"
  config.dataset.image_size = 224
  config.dataset.eval_resize = 256

  config.model.backbone = "ResNet50"
  config.model.stem = "imagenet"
  config.model.width = 1.0
  config.model.projector = "8192-8192-8192"
  config.model.dtype = "bfloat16"

  config.loss.lambd = 0.0051

  config.optim.name = "lars"
  config.optim.lr_weights = 0.2
  config.optim.lr_biases = 0.0048
  config.optim.weight_decay = 1e-6
  config.optim.momentum = 0.9
  config.optim.eta = 0.001
  config.optim.schedule = "warmup_cosine"
  config.optim.warmup_epochs = 10.0
  config.optim.end_lr_factor = 0.001

  config.batch_size = 2048
  config.num_epochs = 1000.0
  # 625 steps per epoch: log every ~minute, checkpoint every ~8 epochs.
  config.log_every_steps = 100
  config.checkpoint_every_steps = 5000
  config.image_every_steps = 5000
  config.eval_every_steps = 0  # A kNN pass over 1.28M images is an evaluation job, not a monitor.
  # The end-of-run table reads whole splits into memory (built for small datasets); on ImageNet
  # the linear probe is its own job: python -m barlow_jax.evaluate --config=configs/eval_linear.py
  config.eval.final = False

  if arg == "runlocal":
    config.dataset.image_size = 64
    config.dataset.eval_resize = 73
    config.dataset.shuffle_buffer = 1000
    config.model.dtype = "float32"
    config.batch_size = 16
    config.num_train_steps = 2
    config.num_train_examples = 1024
    config.optim.warmup_epochs = 0.0
    config.log_every_steps = 1
    config.checkpoint_every_steps = 2
    config.image_every_steps = 2
    config.eval.final = False
  elif arg:
    raise ValueError(f"configs/imagenet_resnet50.py: unknown argument {arg!r}; use 'runlocal'.")
  return config

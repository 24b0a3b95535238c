"""The tiny pretraining config of the multi-process tests, as a config file for `barlow_jax.main`.

    python -m barlow_jax.launch --num_processes=2 --devices_per_process=4 -- \
        --config=tests/configs_tiny.py --workdir=/tmp/tiny_2x4

ResNet-18 at width 0.125 with the CIFAR stem, 16 px plain digits, projector 32-32-32, AdamW at a
constant rate, global batch 16, 14 steps, a checkpoint every 6 (and at the end). The same
settings as `tests/test_train.py`'s `tiny_config` except for the projector and the run length.
"""

from barlow_jax.config import base_config


def get_config(arg: str | None = None):
  if arg:
    raise ValueError(f"tests/configs_tiny.py takes no argument, got {arg!r}.")
  config = base_config()
  config.dataset.name = "digits"
  config.dataset.train_split = "train"
  config.dataset.eval_split = "test"
  config.dataset.probe_split = "train"
  config.dataset.image_size = 16
  config.dataset.eval_resize = 16
  config.dataset.shuffle_buffer = 1437
  config.augment.mean = (0.3, 0.3, 0.3)
  config.augment.std = (0.31, 0.31, 0.31)
  for view in (config.augment.view_a, config.augment.view_b):
    view.crop_area = (0.4, 1.0)
    view.flip_prob = 0.0
    view.blur_prob = 0.0
    view.solarize_prob = 0.0
  config.model.backbone = "ResNet18"
  config.model.stem = "cifar"
  config.model.width = 0.125
  config.model.projector = "32-32-32"
  config.model.dtype = "float32"
  config.optim.name = "adamw"
  config.optim.lr_weights = 3e-3
  config.optim.lr_biases = 3e-3
  config.optim.scale_lr_by_batch = False
  config.optim.weight_decay = 0.0
  config.optim.schedule = "constant"
  config.optim.warmup_epochs = 0.0
  config.batch_size = 16
  config.num_train_steps = 14
  config.log_every_steps = 5
  config.checkpoint_every_steps = 6
  config.keep_checkpoints = 3
  config.image_every_steps = 0
  config.eval_every_steps = 0
  config.online_probe = True
  config.online_probe_lr = 0.1
  config.eval.final = False
  return config

r"""CIFAR-10, ResNet-18 (CIFAR stem), 1000 epochs: the small-image recipe.

docs/reference.md §4's small-image settings (32 px crops of area (0.08, 1), no blur, solarize 0 /
0.2, a ResNet-18 with a 3x3 stride-1 stem and no max-pool) with the optimisation of solo-learn's
public CIFAR-10 Barlow Twins recipe, which docs/reference.md §6 quotes at about 92% linear top-1
after 1000 epochs: global batch 256, LARS with lr 0.3 per 256 for weights and for biases / BN (solo-
learn excludes them from the trust ratio and decay but gives them the same lr), trust coefficient
eta 0.02, weight decay 1e-4, warmup 10 epochs then cosine, lambda 0.0051, projector
2048-2048-2048, and its loss scale 0.1, which is `gradient_scale = 0.1` here (it matters for the
biases / BN only: LARS's trust ratio cancels it on the weights except against the decay).
bfloat16 compute on accelerators.

    python -m barlow_jax.main --config=configs/cifar10_resnet18.py --workdir=workdirs/cifar10

195 steps per epoch, 195,000 steps. Online linear probe and kNN (every 20 epochs) in TensorBoard.

Expected, not measured here: 92.10% top-1 of the online linear probe (solo-learn README, CIFAR-10
table, Barlow Twins / ResNet18 / 1000 epochs, vturrisi/solo-learn; its recipe
scripts/pretrain/cifar/barlow.yaml). solo-learn's lr clipping option (`clip_lr`) is not reproduced.
`configs/cifar100_resnet18.py` is the same recipe on CIFAR-100.

Local variant (`:runlocal`): 20 steps of batch 32, float32, a quarter-width network:

    python -m barlow_jax.main --config=configs/cifar10_resnet18.py:runlocal --workdir=/tmp/c10
"""

from barlow_jax.config import base_config, solo_learn_small_recipe

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def get_config(arg: str | None = None):
  config = base_config()
  config.dataset.name = "cifar10"
  config.dataset.train_split = "train"
  config.dataset.eval_split = "test"
  config.dataset.probe_split = "train"
  config.dataset.image_size = 32
  config.dataset.eval_resize = 32  # Small images: eval uses them as they are.
  config.dataset.cache = True
  config.dataset.shuffle_buffer = 50_000

  config.augment.mean = CIFAR_MEAN
  config.augment.std = CIFAR_STD
  for view, solarize in ((config.augment.view_a, 0.0), (config.augment.view_b, 0.2)):
    view.crop_area = (0.08, 1.0)
    view.blur_prob = 0.0
    view.solarize_prob = solarize

  solo_learn_small_recipe(config, stem="cifar")

  config.batch_size = 256
  config.num_epochs = 1000.0
  config.log_every_steps = 195
  config.checkpoint_every_steps = 195 * 20
  config.image_every_steps = 195 * 20
  config.eval_every_steps = 195 * 20
  config.online_probe = True
  config.online_probe_lr = 0.1

  if arg == "runlocal":
    config.model.width = 0.25
    config.model.projector = "256-256-256"
    config.model.dtype = "float32"
    config.dataset.shuffle_buffer = 1000
    config.batch_size = 32
    config.num_train_steps = 20
    config.num_train_examples = 2048
    config.optim.warmup_epochs = 0.1
    config.log_every_steps = 5
    config.checkpoint_every_steps = 10
    config.image_every_steps = 10
    config.eval_every_steps = 0
    config.eval.final = False
  elif arg:
    raise ValueError(f"configs/cifar10_resnet18.py: unknown argument {arg!r}; use 'runlocal'.")
  return config

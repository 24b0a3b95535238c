r"""CIFAR-100, ResNet-18 (CIFAR stem), 1000 epochs: `configs/cifar10_resnet18.py` on CIFAR-100.

solo-learn trains CIFAR-100 with its CIFAR-10 settings (scripts/pretrain/cifar/barlow.yaml, the
dataset switched): global batch 256, LARS lr 0.3 per 256, eta 0.02, weight decay 1e-4, warmup 10
epochs then cosine, lambda 0.0051, projector 2048-2048-2048, loss scale 0.1 (`gradient_scale`),
32 px crops without blur, solarize 0 / 0.2. Only the data and its normalisation differ here.

    python -m barlow_jax.main --config=configs/cifar100_resnet18.py --workdir=workdirs/cifar100

Expected, not measured here: 70.90% top-1 of the online linear probe (solo-learn README,
CIFAR-100 table, Barlow Twins / ResNet18 / 1000 epochs, vturrisi/solo-learn).

Local variant (`:runlocal`): the CIFAR-10 file's (20 steps of batch 32, quarter width):

    python -m barlow_jax.main --config=configs/cifar100_resnet18.py:runlocal --workdir=/tmp/c100
"""

import importlib.util
import os

# CIFAR-100 training-set channel mean / std on [0, 1] pixels.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def _cifar10_file():
  # Loaded by path: config files are run by path (`--config=configs/...`), not as a package.
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar10_resnet18.py")
  spec = importlib.util.spec_from_file_location("configs_cifar10_resnet18", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str | None = None):
  if arg not in (None, "", "runlocal"):
    raise ValueError(f"configs/cifar100_resnet18.py: unknown argument {arg!r}; use 'runlocal'.")
  config = _cifar10_file().get_config(arg or None)
  config.dataset.name = "cifar100"
  config.augment.mean = CIFAR100_MEAN
  config.augment.std = CIFAR100_STD
  return config

r"""STL-10, ResNet-18: pretraining on the 100,000 images of the `unlabelled` split.

TFDS `stl10`: pretraining on `unlabelled` (96 px images without labels, so no online probe); the
end-of-run table (kNN and linear probes) on the labelled `train` (5,000) and `test` (8,000) splits.
Crops of 64 px as Mixed Barlow Twins' STL-10 runs use (wgcban/mix-bt, main.py), a ResNet-18 with
the CIFAR stem (3x3 stride-1, no max-pool; mix-bt's STL-10 network keeps the max-pool), and the
optimisation of `configs/cifar10_resnet18.py` (solo-learn's small-image LARS recipe: batch 256,
lr 0.3, eta 0.02, weight decay 1e-4, projector 2048-2048-2048, loss scale 0.1), 1000 epochs.

    python -m barlow_jax.main --config=configs/stl10_resnet18.py --workdir=workdirs/stl10

Expected, not measured here: no published number for this recipe. The anchor the issue names,
the plain Barlow Twins baseline of Mixed Barlow Twins (Bandara et al. 2023, arXiv:2312.02151,
its STL-10 table), could not be verified from the sources available here. The verified STL-10
numbers are those of Mixed Barlow Twins' own released ResNet-18 checkpoint (wgcban/mix-bt
README, section 3.1: kNN 88.94%, linear 91.02%), which adds a mixup regulariser, pretrains on
train + unlabelled with Adam, lambda 0.0078125 and a 1024-d embedding: context, not a target.

Local variant (`:runlocal`): 2 steps of batch 16 at 32 px, float32, a quarter-width network:

    python -m barlow_jax.main --config=configs/stl10_resnet18.py:runlocal --workdir=/tmp/stl10
"""

from barlow_jax.config import base_config, shrink_for_local, solo_learn_small_recipe


def get_config(arg: str | None = None):
  config = base_config()
  config.dataset.name = "stl10"
  config.dataset.train_split = "unlabelled"
  config.dataset.eval_split = "test"
  config.dataset.probe_split = "train"
  config.dataset.image_size = 64
  config.dataset.eval_resize = 64  # The whole 96 px image, resized.
  config.dataset.shuffle_buffer = 20_000

  for view, solarize in ((config.augment.view_a, 0.0), (config.augment.view_b, 0.2)):
    view.crop_area = (0.08, 1.0)
    view.blur_prob = 0.0
    view.solarize_prob = solarize

  solo_learn_small_recipe(config, stem="cifar")

  config.batch_size = 256
  config.num_epochs = 1000.0
  config.log_every_steps = 390  # 390 steps per epoch.
  config.checkpoint_every_steps = 390 * 20
  config.image_every_steps = 390 * 20
  # The periodic kNN monitor takes its classes from the online probe, which needs a labelled
  # training split: the kNN and linear probes run at the end instead (config.eval.final).
  config.eval_every_steps = 0
  config.online_probe = False  # The unlabelled split has no labels.

  if arg == "runlocal":
    shrink_for_local(config, image_size=32)
  elif arg:
    raise ValueError(f"configs/stl10_resnet18.py: unknown argument {arg!r}; use 'runlocal'.")
  return config

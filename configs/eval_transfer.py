r"""Transfer of a frozen backbone to another dataset (Barlow Twins paper, Sec. 4, Table 3).

`get_config("DATASET[,runlocal]")`: DATASET is a preset below (or its TFDS name), `folder`
(`--config.dataset.folder=ROOT` with ROOT/train/CLASS/*.jpg and ROOT/test/CLASS/*.jpg), or any
other labelled TFDS image dataset (trained on "train", tested on "test"; change with
`--config.dataset.probe_split / eval_split`, TFDS slices such as 'train[:10%]' work). The
architecture is read from `config.eval.backbone`; images get the ImageNet eval preprocessing
(short side `dataset.eval_resize`, centre `dataset.image_size` crop, ImageNet mean / std in
`augment.mean / std`): set those to what your backbone was trained with.

| preset | TFDS dataset | train / test | protocol | paper (Table 3) |
|---|---|---|---|---|
| places365 | places365_small (*) | train / validation | linear probe, top-1 | 54.1 (Places-205) |
| inat2018 | i_naturalist2018 | train / validation | linear probe, top-1 | 46.5 |
| voc07 | voc/2007 | trainval / test | per-class linear SVMs, mAP | 86.2 |
| cifar10, cifar100 | cifar10, cifar100 | train / test (32 px, resized to 224) | linear probe | - |
| dtd, oxford_flowers102 | dtd, oxford_flowers102 | train+validation / test | linear probe | - |
| food101 | food101 | train / validation | linear probe | - |

(*) Places-205, the paper's dataset, is not in TFDS: Places-365 is its nearest public stand-in.

    # The reference's released ResNet-50 on VOC07 (TFDS data prepared under data_dir):
    python -m barlow_jax.convert --from resnet50.pth --to /tmp/bt_r50
    python -m barlow_jax.evaluate --config=configs/eval_transfer.py:voc07 \
        --config.eval.backbone=/tmp/bt_r50 --config.dataset.data_dir=$TFDS_DIR \
        --workdir=/tmp/transfer_voc07

The single-label protocol is the linear probe of configs/eval_linear.py on features extracted
once (standardised; SGD momentum 0.9, lr 0.3 per 256, wd 1e-6, batch 256, cosine, 100 epochs);
VOC07 follows Goyal et al. 2019 (barlow_jax/evaluation/voc07.py). `,runlocal` trains the probe
for 2 epochs and tries 3 SVM costs (a smoke test of the path, not a result).
"""

from barlow_jax.config import base_config

# preset -> (TFDS name, probe split, eval split, task, eval resize).
PRESETS = {
  "places365": ("places365_small", "train", "validation", "single_label", 256),
  "inat2018": ("i_naturalist2018", "train", "validation", "single_label", 256),
  "voc07": ("voc/2007", "train+validation", "test", "multi_label", 256),
  # 32 px images: resize the whole image to the crop size instead of cutting its border off.
  "cifar10": ("cifar10", "train", "test", "single_label", 224),
  "cifar100": ("cifar100", "train", "test", "single_label", 224),
  "dtd": ("dtd", "train+validation", "test", "single_label", 256),
  "oxford_flowers102": ("oxford_flowers102", "train+validation", "test", "single_label", 256),
  "food101": ("food101", "train", "validation", "single_label", 256),
}
_BY_TFDS_NAME = {v[0]: k for k, v in PRESETS.items()}


def get_config(arg: str | None = None):
  tokens = [t for t in (arg or "").split(",") if t]
  runlocal = "runlocal" in tokens
  names = [t for t in tokens if t != "runlocal"]
  if len(names) != 1:
    raise ValueError(
      f"configs/eval_transfer.py needs one dataset (a preset of {sorted(PRESETS)}, 'folder' or "
      f"a TFDS name), e.g. configs/eval_transfer.py:voc07; got {arg!r}"
    )
  name = _BY_TFDS_NAME.get(names[0], names[0])
  config = base_config()
  config.eval.mode = "transfer"
  config.eval.final = False
  if name in PRESETS:
    tfds_name, probe, test, task, resize = PRESETS[name]
  else:
    tfds_name, probe, test, task, resize = name, "train", "test", "single_label", 256
  config.dataset.name = tfds_name
  config.dataset.train_split = probe
  config.dataset.probe_split = probe
  config.dataset.eval_split = test
  config.dataset.image_size = 224
  config.dataset.eval_resize = resize
  config.transfer.task = task
  if runlocal:
    config.eval.probe_epochs = 2
    config.transfer.svm_costs = (0.01, 0.1, 1.0)
  return config

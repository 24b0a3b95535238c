"""Transfer evaluation: presets load and validate, VOC-style targets from objects, the single-label
and multi-label paths end to end under tfds.testing.mock_data, and the export half of the
detectron2 path. Nothing downloads."""

import json

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from barlow_jax import checkpointing, convert, evaluate
from barlow_jax.evaluation import features as eval_features
from barlow_jax.evaluation import transfer
from configs import eval_transfer

_SIZE = 16


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory):
  """A random-init ResNet-18 (width 1/8, CIFAR stem) written as a backbone export."""
  model_config = checkpointing.full_model_config(
    {"backbone": "ResNet18", "stem": "cifar", "width": 0.125, "dtype": "float32"}
  )
  backbone = eval_features.create_backbone(ml_collections.ConfigDict(model_config))
  variables = eval_features.init_backbone(backbone, _SIZE, seed=0)
  directory = str(tmp_path_factory.mktemp("transfer") / "backbone")
  checkpointing.save_backbone(directory, variables, model_config)
  return directory


def _config(preset, backbone_dir, **transfer_overrides):
  config = eval_transfer.get_config(f"{preset},runlocal")
  config.eval.backbone = backbone_dir
  config.dataset.image_size = _SIZE
  config.eval.probe_batch_size = 8
  config.transfer.batch_size = 8
  config.transfer.svm_jobs = 1
  config.transfer.svm_folds = 2
  config.transfer.update(transfer_overrides)
  return config


@pytest.mark.parametrize("preset", sorted(eval_transfer.PRESETS))
def test_presets_load_and_validate_against_the_tfds_catalogue(preset):
  config = eval_transfer.get_config(preset)
  transfer.validate_config(config)
  assert config.eval.mode == "transfer" and config.dataset.image_size == 224
  # Same config from the TFDS name; the builder's metadata needs no download.
  assert eval_transfer.get_config(config.dataset.name).to_dict() == config.to_dict()
  features = tfds.builder(config.dataset.name).info.features
  if config.transfer.task == "multi_label":
    objects = features[config.transfer.objects_key].feature
    assert config.transfer.object_label_key in objects
    assert config.transfer.object_difficult_key in objects
  else:
    assert features[config.dataset.label_key].num_classes > 1


def test_other_datasets_folder_and_bad_arguments():
  config = eval_transfer.get_config("svhn_cropped,runlocal")
  assert (config.dataset.name, config.dataset.probe_split, config.dataset.eval_split) == (
    "svhn_cropped",
    "train",
    "test",
  )
  assert config.eval.probe_epochs == 2 and len(config.transfer.svm_costs) == 3
  assert eval_transfer.get_config("folder").dataset.name == "folder"
  assert transfer.PUBLISHED["voc/2007"][2] == 0.862
  for arg in ("", "voc07,cifar10"):
    with pytest.raises(ValueError, match="one dataset"):
      eval_transfer.get_config(arg)
  config = eval_transfer.get_config("voc07")
  for key, value, match in (
    ("transfer.task", "detection", "config.transfer.task"),
    ("dataset.eval_split", "train+validation", "both"),
    ("transfer.svm_folds", 1, "svm_folds"),
    ("transfer.svm_costs", (0.0, 1.0), "svm_costs"),
  ):
    bad = ml_collections.ConfigDict(config.to_dict())
    section, name = key.split(".")
    bad[section][name] = value
    with pytest.raises(ValueError, match=match):
      transfer.validate_config(bad)


def test_multi_label_needs_a_tfds_kind_whatever_the_registry_holds(monkeypatch):
  from barlow_jax.data import sources

  monkeypatch.setitem(sources.SOURCE_KINDS, "flat", sources.SourceKind(None, ("flat",)))
  for name in ("flat", "folder", "digits"):
    config = eval_transfer.get_config("voc07")
    config.dataset.name = name
    with pytest.raises(ValueError, match=f"per-object labels .*not {name!r}"):
      transfer.validate_config(config)


def test_multilabel_targets_hand_made():
  labels = tf.constant([3, 1, 3, 0, 0])
  difficult = tf.constant([True, True, False, True, True])
  # Class 3: one easy object -> 1; classes 1 and 0: only difficult ones -> -1; 2 and 4: none.
  np.testing.assert_array_equal(
    transfer.multilabel_targets(labels, difficult, 5).numpy(), [-1, -1, 0, 1, 0]
  )
  empty = tf.zeros([0], tf.int64)
  np.testing.assert_array_equal(
    transfer.multilabel_targets(empty, tf.zeros([0], tf.bool), 3).numpy(), [0, 0, 0]
  )
  with pytest.raises(tf.errors.InvalidArgumentError, match="difficult flags"):
    transfer.multilabel_targets(labels, difficult[:3], 5)


def _png(image):
  return tf.io.encode_png(image).numpy()


def _voc_examples(split):
  """VOC-style images: 1-3 objects each, the third difficult (40 train / 24 test); every class
  has two easy objects in train."""
  n, offset = (24, 100) if "test" in str(split) else (40, 0)
  rng = np.random.default_rng(offset)
  for i in range(offset, offset + n):
    k = 1 + i % 3
    labels = np.array([(i + 7 * j) % 20 for j in range(k)], np.int64)
    difficult = np.arange(k) == 2
    image = rng.integers(0, 256, size=(20 + i % 5, 24, 3), dtype=np.uint8)
    yield image, labels, difficult


def _voc_as_dataset(self, split, decoders=None, **kwargs):
  del self, kwargs
  encoded = bool(decoders)  # The transfer path reads the image bytes (SkipDecoding).

  def generate():
    for image, labels, difficult in _voc_examples(split):
      yield {
        "image": _png(image) if encoded else image,
        "objects": {"label": labels, "is_difficult": difficult},
      }

  image_spec = tf.TensorSpec([], tf.string) if encoded else tf.TensorSpec([None, None, 3], tf.uint8)
  return tf.data.Dataset.from_generator(
    generate,
    output_signature={
      "image": image_spec,
      "objects": {
        "label": tf.TensorSpec([None], tf.int64),
        "is_difficult": tf.TensorSpec([None], tf.bool),
      },
    },
  )


def _numpy_targets(labels, difficult, num_classes):
  targets = np.zeros(num_classes, np.int64)
  for c in np.unique(labels):
    targets[c] = 1 if np.any(~difficult[labels == c]) else -1
  return targets


def test_voc_style_batches_and_the_svm_path_end_to_end(backbone_dir, tmp_path):
  config = _config("voc07", backbone_dir, svm_costs=(0.1, 1.0))
  with tfds.testing.mock_data(as_dataset_fn=_voc_as_dataset):
    batches, names = transfer.multilabel_batches(config, "test", batch_size=8)
    batches = list(batches)
    results = evaluate.evaluate(config, str(tmp_path))
  assert names[:3] == ["aeroplane", "bicycle", "bird"] and len(names) == 20
  assert [b["image"].shape for b in batches] == [(8, _SIZE, _SIZE, 3)] * 3
  targets = np.concatenate([b["label"][b["mask"]] for b in batches])
  expected = np.stack([_numpy_targets(lab, dif, 20) for _, lab, dif in _voc_examples("test")])
  np.testing.assert_array_equal(targets, expected)
  assert {-1, 0, 1} == set(np.unique(targets))

  assert results["num_train"] == 40 and results["num_eval"] == 24
  assert results["feature_dim"] == 64 and results["num_classes"] == 20
  for key in ("map", "map_11_point", "map_uninterpolated"):
    assert 0.0 <= results[key] <= 1.0
  assert len(results["ap"]) == 20 and set(results["costs"]) <= {0.1, 1.0}
  assert results["published"]["value"] == 0.862
  with open(tmp_path / "results.json") as f:
    assert json.load(f)["map"] == pytest.approx(results["map"])
  text = (tmp_path / "results.md").read_text()
  assert "86.2 (VOC07 mAP" in text and "| aeroplane |" in text and "11-point" in text


def _coloured_as_dataset(self, split, decoders=None, **kwargs):
  """cifar10-style examples whose colour is their class (4 classes): a linear probe's top-1 on
  random-init features of them is 1."""
  del self, kwargs
  colours = np.array([[230, 20, 20], [20, 230, 20], [20, 20, 230], [230, 230, 20]], np.uint8)
  n = 16 if "test" in str(split) else 32
  rng = np.random.default_rng(n)

  def generate():
    for i in range(n):
      label = i % 4
      image = np.clip(colours[label] + rng.integers(-10, 10, size=(32, 32, 3)), 0, 255)
      yield {"image": _png(image.astype(np.uint8)), "label": np.int64(label)}

  del decoders
  return tf.data.Dataset.from_generator(
    generate,
    output_signature={"image": tf.TensorSpec([], tf.string), "label": tf.TensorSpec([], tf.int64)},
  )


def test_single_label_linear_probe_end_to_end(backbone_dir, tmp_path):
  config = _config("cifar10", backbone_dir)
  config.eval.probe_epochs = 30
  with tfds.testing.mock_data(as_dataset_fn=_coloured_as_dataset):
    results = evaluate.evaluate(config, str(tmp_path))
  assert (results["num_train"], results["num_eval"], results["num_classes"]) == (32, 16, 10)
  assert results["top1"] == 1.0 and results["train_top1"] == 1.0
  assert "published" not in results
  text = (tmp_path / "results.md").read_text()
  assert "| linear top-1 | 100.0 | - |" in text


def test_places_preset_reports_the_paper_number_beside(backbone_dir, tmp_path):
  config = _config("places365", backbone_dir)
  with tfds.testing.mock_data(num_examples=8):
    results = evaluate.evaluate(config, str(tmp_path))
  assert results["num_classes"] == 365 and 0.0 <= results["top1"] <= 1.0
  text = (tmp_path / "results.md").read_text()
  assert "54.1 (Places-205 top-1" in text and "stand-in" in text


def test_multilabel_errors_name_the_key(backbone_dir, tmp_path):
  config = _config("voc07", backbone_dir, objects_key="boxes")
  with pytest.raises(ValueError, match="config.transfer.objects_key='boxes'"):
    evaluate.evaluate(config, str(tmp_path))
  config = _config("voc07", backbone_dir, object_difficult_key="hard")
  with pytest.raises(ValueError, match="'hard' is not a field of 'objects'"):
    evaluate.evaluate(config, str(tmp_path))


# The renaming of detectron2's tools/convert-torchvision-to-d2.py, restated.
def _detectron2_name(key):
  if "layer" not in key:
    key = "stem." + key
  for t in (1, 2, 3, 4):
    key = key.replace(f"layer{t}", f"res{t + 1}")
  for t in (1, 2, 3):
    key = key.replace(f"bn{t}", f"conv{t}.norm")
  return key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def _detectron2_resnet50_names():
  """Every tensor of detectron2's ResNet-50 backbone (stem + res2..res5)."""
  bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
  names = {"stem.conv1.weight"} | {f"stem.conv1.norm.{b}" for b in bn}
  for stage, blocks in zip((2, 3, 4, 5), (3, 4, 6, 3)):
    for i in range(blocks):
      convs = [f"conv{j}" for j in (1, 2, 3)] + (["shortcut"] if i == 0 else [])
      for conv in convs:
        names.add(f"res{stage}.{i}.{conv}.weight")
        names |= {f"res{stage}.{i}.{conv}.norm.{b}" for b in bn}
  return names


def test_export_for_detectron2s_torchvision_converter(tmp_path):
  """`convert --export` of a ResNet-50 gives the file detectron2's converter maps completely."""
  torch = pytest.importorskip("torch")
  model_config = checkpointing.full_model_config({})  # ResNet-50, ImageNet stem, width 1.
  backbone = eval_features.create_backbone(ml_collections.ConfigDict(model_config))
  shapes = jax.eval_shape(
    lambda: backbone.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3)), train=False)
  )
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
  checkpointing.save_backbone(str(tmp_path / "bt_r50"), variables, model_config)
  pth = str(tmp_path / "r50.pth")
  assert convert.main(["--export", "--from", str(tmp_path / "bt_r50"), "--to", pth]) == 0

  state = torch.load(pth, map_location="cpu")  # As the converter reads it.
  d2 = {_detectron2_name(k): v.detach().numpy() for k, v in state.items()}
  assert set(d2) == _detectron2_resnet50_names()
  # torchvision's resnet50 has 25,557,032 parameters, 2,049,000 of them in fc.
  learned = [v for k, v in d2.items() if not k.endswith(("running_mean", "running_var", "tracked"))]
  assert sum(v.size for v in learned) == 23_508_032
  assert d2["stem.conv1.weight"].shape == (64, 3, 7, 7)
  assert d2["res5.2.conv3.weight"].shape == (2048, 512, 1, 1)
  assert d2["res2.0.conv2.weight"].dtype == np.float32
  # The stem's kernel went from flax HWIO to torch OIHW.
  stem = np.asarray(variables["params"]["conv1"]["kernel"])
  np.testing.assert_array_equal(d2["stem.conv1.weight"], stem.transpose(3, 2, 0, 1))


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
def test_voc_style_batches_resize_with_eval_interpolation(backbone_dir, method):
  # The multi-label path used to resize bilinearly whatever config.dataset.eval_interpolation said.
  from PIL import Image

  config = _config("voc07", backbone_dir)
  config.dataset.eval_interpolation = method
  with tfds.testing.mock_data(as_dataset_fn=_voc_as_dataset):
    batches, _ = transfer.multilabel_batches(config, "test", batch_size=8)
    first = next(iter(batches))["image"][0]
  mean, std = np.asarray(config.augment.mean), np.asarray(config.augment.std)
  pixels = first * std + mean  # [0, 1], before normalisation.
  image = next(_voc_examples("test"))[0]
  for name, pil_filter in (("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC)):
    # PIL in float ("F" images, channel by channel): its 8-bit path rounds after each pass.
    expected = np.stack(
      [
        np.asarray(
          Image.fromarray(image[..., c] / np.float32(255), mode="F").resize(
            (_SIZE, _SIZE), pil_filter
          )
        )
        for c in range(3)
      ],
      -1,
    )
    error = np.abs(pixels - expected).max()
    assert (error <= 1e-4) == (name == method), (name, error)

"""barlow_jax.data.pretrain, the pretraining input pipeline: batch layout, determinism and resume,
multi-process shards, folders with bad files, TFDS datasets under mock data, evaluation padding,
clear errors."""

import io
import logging
import os

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")

from barlow_jax import config as config_lib  # noqa: E402
from barlow_jax import data  # noqa: E402


def _digits_config(batch=32, size=12):
  config = config_lib.base_config()
  config.dataset.name = "cluttered_digits"
  config.dataset.image_size = size
  config.dataset.eval_split = "test"
  config.batch_size = batch
  return config


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_pretrain_batches_have_the_contract_layout():
  config = _digits_config(batch=32, size=12)
  batch = next(data.create_pretrain_iterator(config, process_index=0, process_count=1))
  assert set(batch) == {"view_a", "view_b", "label"}
  for key in ("view_a", "view_b"):  # 8-bit pixels leave the host; the step normalises them.
    assert batch[key].shape == (32, 12, 12, 3) and batch[key].dtype == np.uint8
  assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
  normalized = data.normalize_views(batch, config)
  assert normalized["view_a"].dtype == np.float32
  np.testing.assert_array_equal(normalized["label"], batch["label"])
  # Normalised: pixels back on [0, 1] after undoing mean / std.
  mean, std = np.array(config.augment.mean), np.array(config.augment.std)
  pixels = normalized["view_a"] * std + mean
  np.testing.assert_allclose(pixels, batch["view_a"] / 255, atol=1e-6)
  assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
  assert not np.allclose(batch["view_a"], batch["view_b"])
  assert data.steps_per_epoch(config) == 7185 // 32
  assert data.num_classes(config) == 10


def _jpeg_folder_config(tmp_path, n=8, size=16):
  root = tmp_path / "jpegs"
  root.mkdir()
  rng = np.random.RandomState(1)
  for i in range(n):
    smooth = np.kron(rng.randint(0, 255, (5, 6, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    _write_jpeg(str(root / f"{i}.jpg"), smooth)  # 40 x 48: crops downscale to 16.
  config = config_lib.base_config()
  config.dataset.name = "folder"
  config.dataset.folder = str(root)
  config.dataset.image_size = size
  config.batch_size = n
  return config


def test_uint8_views_are_the_float_views_rounded(tmp_path):
  # The views leave the host as 8-bit pixels; normalised, they are the float pipeline's views
  # (augment_view: crop, colour ops, normalisation in float32) to the rounding.
  from barlow_jax.data import augment, crop

  config = _jpeg_folder_config(tmp_path)
  batch = next(data.create_pretrain_iterator(config, process_index=0, process_count=1))
  paths = data.list_folder(config.dataset.folder)[0]
  order = tf.argsort(tf.random.stateless_uniform([8], seed=augment.example_seed(0, 0, -1, -1)))
  normalized = data.normalize_views(batch, config)
  std = np.array(config.augment.std)
  for row, index in enumerate(order.numpy()):
    image = crop.decode_whole(tf.io.read_file(paths[index]))
    for v, key in enumerate(("view_a", "view_b")):
      seed = augment.example_seed(0, 0, int(index), v)
      expect = augment.augment_view(
        image, seed, config.augment[key], size=16, mean=config.augment.mean, std=std
      ).numpy()
      np.testing.assert_allclose(normalized[key][row], expect, atol=0.51 / 255 / std.min())


def test_on_device_host_views_are_the_crops_and_flips_alone(tmp_path):
  config = _jpeg_folder_config(tmp_path)
  config.augment.on_device = True
  host_part = _take(data.create_pretrain_iterator(config, process_index=0, process_count=1), 3)
  resumed = next(
    data.create_pretrain_iterator(config, start_step=2, process_index=0, process_count=1)
  )
  for key in host_part[2]:
    np.testing.assert_array_equal(host_part[2][key], resumed[key])
  import ml_collections

  plain = ml_collections.ConfigDict(config.to_dict())  # Same crops and flips, no colour op.
  plain.augment.on_device = False
  for view in (plain.augment.view_a, plain.augment.view_b):
    for key in ("jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob"):
      view[key] = 0.0
  crops = next(data.create_pretrain_iterator(plain, process_index=0, process_count=1))
  for key in ("view_a", "view_b"):
    assert host_part[0][key].dtype == np.uint8
    np.testing.assert_array_equal(host_part[0][key], crops[key])
  config.augment.on_device = False  # The colour ops on the host change the pixels.
  full = next(data.create_pretrain_iterator(config, process_index=0, process_count=1))
  assert not np.array_equal(full["view_a"], host_part[0]["view_a"])


def test_same_seed_same_batches_resume_is_exact_and_epochs_differ():
  config = _digits_config(batch=32, size=8)
  config.num_train_examples = 128  # 4 steps per epoch, so epochs come quickly.
  assert data.steps_per_epoch(config) == 4
  run = _take(data.create_pretrain_iterator(config, process_index=0, process_count=1), 7)
  again = _take(data.create_pretrain_iterator(config, process_index=0, process_count=1), 2)
  resumed = _take(
    data.create_pretrain_iterator(config, start_step=5, process_index=0, process_count=1),
    2,
  )
  for a, b in zip(run[:2], again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  for a, b in zip(run[5:7], resumed):  # Step 5 is inside epoch 1, after a skip of one batch.
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(run[0]["view_a"], run[4]["view_a"])  # Epoch 1: new order and crops.
  config.seed = 1
  other = next(data.create_pretrain_iterator(config, process_index=0, process_count=1))
  assert not np.array_equal(other["view_a"], run[0]["view_a"])


def test_different_epochs_give_the_same_example_different_crops():
  from barlow_jax.data import augment, crop

  view = config_lib.base_config().augment.view_a
  windows = [
    [
      tuple(
        crop.crop_window(
          20,
          20,
          augment.crop_seed(augment.example_seed(0, e, i, 0)),
          area=view.crop_area,
          aspect=view.crop_aspect,
        ).numpy()
      )
      for e in range(2)
    ]
    for i in range(20)
  ]
  assert sum(w0 != w1 for w0, w1 in windows) >= 18


def _write_png(path, array):
  tf.io.write_file(path, tf.io.encode_png(array))


def _write_jpeg(path, array):
  tf.io.write_file(path, tf.io.encode_jpeg(array, quality=100))


def _identity_views(config):
  """Augmentations off (full crop, no photometric op), pixels left unnormalised."""
  for view in (config.augment.view_a, config.augment.view_b):
    view.crop_area = (1.0, 1.0)
    view.crop_aspect = (1.0, 1.0)
    view.crop_method = "bilinear"
    for key in (
      "flip_prob",
      "jitter_prob",
      "grayscale_prob",
      "blur_prob",
      "solarize_prob",
      "channel_permute_prob",
    ):
      view[key] = 0.0
  config.augment.mean = (0.0, 0.0, 0.0)
  config.augment.std = (1.0, 1.0, 1.0)


def test_two_processes_read_disjoint_shards_that_cover_the_split(tmp_path):
  # 48 flat images whose colour encodes their index: a view's colour tells which image it is.
  root = tmp_path / "flat"
  root.mkdir()
  for i in range(48):
    _write_png(str(root / f"{i:03d}.png"), np.full((6, 6, 3), [i * 5, 255 - i * 5, 9], np.uint8))
  config = config_lib.base_config()
  config.dataset.name = "folder"
  config.dataset.folder = str(root)
  config.dataset.image_size = 4
  config.batch_size = 8
  _identity_views(config)
  seen = []
  for p in range(2):
    it = data.create_pretrain_iterator(config, process_index=p, process_count=2)
    batches = [data.normalize_views(b, config) for b in _take(it, 6)]  # One epoch.
    assert all("label" not in b and b["view_a"].shape == (4, 4, 4, 3) for b in batches)
    ids = np.concatenate([np.round(b["view_a"][:, 0, 0, 0] * 255 / 5) for b in batches])
    seen.append(set(ids.astype(int).tolist()))
    assert len(ids) == len(seen[-1]) == 24  # No repeats within the epoch.
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(range(48))
  # Evaluation shards too: every process yields the same number of (masked) batches.
  eval_batches = [
    list(
      data.create_eval_iterator(config, "train", batch_size=10, process_index=p, process_count=2)
    )
    for p in range(2)
  ]
  assert len(eval_batches[0]) == len(eval_batches[1]) == 5
  ids = [np.round(b["image"][b["mask"], 0, 0, 0] * 255 / 5) for bs in eval_batches for b in bs]
  assert sorted(np.concatenate(ids).astype(int).tolist()) == list(range(48))
  with pytest.raises(ValueError, match="not divisible by the number of processes"):
    config.batch_size = 9
    data.create_pretrain_iterator(config, process_index=0, process_count=2)


def test_identical_view_configs_with_different_seeds_give_different_views():
  # The default views differ by their configs (blur, solarize); with the same config only the
  # per-view seed (config.seed, epoch, index, view) can tell them apart.
  config = _digits_config(batch=16, size=12)
  config.augment.view_b = config_lib.view_config(blur_prob=1.0, solarize_prob=0.0)
  assert config.augment.view_a.to_dict() == config.augment.view_b.to_dict()
  batch = next(data.create_pretrain_iterator(config, process_index=0, process_count=1))
  for a, b in zip(batch["view_a"], batch["view_b"]):
    assert np.abs(a - b).mean() > 0.05


def _sliced_mock_dataset(num_examples):
  """An `as_dataset_fn` for `tfds.testing.mock_data` that serves sub-splits for real.

  mock_data's own generator yields the same examples for any split, "train[5:10]" included, so
  it cannot show which part of a split a process read. Here example i of "train" is a flat image
  of grey level 8 i + 4 (label i % 10), and a sub-split yields exactly its own examples.
  """
  from tensorflow_datasets.core import naming
  from tensorflow_datasets.core import splits as splits_lib

  template = naming.ShardedFileTemplate(
    data_dir="/mock", dataset_name="mock", split="train", filetype_suffix="tfrecord"
  )
  split_dict = splits_lib.SplitDict(
    [
      splits_lib.SplitInfo(
        name="train", shard_lengths=[num_examples], num_bytes=0, filename_template=template
      )
    ]
  )
  requested = []

  def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
    del read_config, shuffle_files
    requested.append(split)
    (instruction,) = split_dict[split].file_instructions
    skip_decoding = decoders is not None and "image" in decoders

    def example(i):
      image = tf.fill([32, 32, 3], tf.cast(8 * i + 4, tf.uint8))
      image = tf.io.encode_png(image) if skip_decoding else image
      return {"image": image, "label": tf.cast(i % 10, tf.int64)}

    indices = tf.range(instruction.skip, instruction.skip + instruction.take, dtype=tf.int64)
    return tf.data.Dataset.from_tensor_slices(indices).map(example)

  return as_dataset, requested


def test_two_processes_read_disjoint_tfds_shards_that_cover_the_split():
  config = config_lib.base_config()
  config.dataset.name = "cifar10"
  config.dataset.image_size = 32
  config.dataset.shuffle_buffer = 64
  config.batch_size = 4
  _identity_views(config)
  as_dataset, requested = _sliced_mock_dataset(20)
  seen, eval_ids = [], []
  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    assert data.steps_per_epoch(config) == 5
    for p in range(2):
      it = data.create_pretrain_iterator(config, process_index=p, process_count=2)
      # One epoch: 5 steps of 2 local examples; views normalised as the step does (identity).
      batches = [data.normalize_views(b, config) for b in _take(it, 5)]
      ids = np.concatenate([np.round((b["view_a"][:, 0, 0, 0] * 255 - 4) / 8) for b in batches])
      seen.append(set(ids.astype(int).tolist()))
      assert len(ids) == len(seen[-1]) == 10  # No repeats within the epoch.
      for b in data.create_eval_iterator(
        config, "train", batch_size=6, process_index=p, process_count=2
      ):
        eval_ids += np.round((b["image"][b["mask"], 0, 0, 0] * 255 - 4) / 8).tolist()
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(range(20))
  assert sorted(int(i) for i in eval_ids) == list(range(20))
  assert any(not isinstance(split, str) for split in requested)  # Sub-splits were asked for.


def test_folder_with_corrupt_rgba_grayscale_and_16_bit_files(tmp_path, caplog):
  from PIL import Image

  root = tmp_path / "labelled"
  (root / "cat").mkdir(parents=True)
  (root / "dog").mkdir(parents=True)
  rng = np.random.RandomState(0)
  for i in range(3):
    _write_jpeg(str(root / "cat" / f"{i}.jpg"), rng.randint(0, 255, (20, 16, 3), np.uint8))
  buf = io.BytesIO()
  Image.fromarray(rng.randint(0, 255, (9, 11, 4), np.uint8), mode="RGBA").save(buf, "PNG")
  (root / "cat" / "rgba.png").write_bytes(buf.getvalue())
  _write_png(str(root / "dog" / "gray.png"), rng.randint(0, 255, (10, 10, 1), np.uint8))
  deep = tf.constant(rng.randint(0, 65535, (12, 9, 1)), tf.uint16)
  tf.io.write_file(str(root / "dog" / "deep.png"), tf.io.encode_png(deep))
  _write_jpeg(str(root / "dog" / "ok.jpg"), rng.randint(0, 255, (30, 30, 3), np.uint8))
  (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
  (root / "dog" / "notes.txt").write_text("not an image")
  config = config_lib.base_config()
  config.dataset.name = "folder"
  config.dataset.folder = str(root)
  config.dataset.image_size = 8
  config.batch_size = 4
  with caplog.at_level(logging.WARNING):
    assert data.num_train_examples(config) == 7
  assert "skipping 2 of 9" in caplog.text and "broken.jpg" in caplog.text
  assert data.num_classes(config) == 2
  batches = _take(
    data.create_pretrain_iterator(config, process_index=0, process_count=1), 4
  )  # 2 epochs.
  labels = np.concatenate([b["label"] for b in batches[:1]] + [batches[1]["label"]])
  assert set(labels.tolist()) <= {0, 1}
  for b in batches:
    assert np.isfinite(b["view_a"]).all() and b["view_b"].shape == (4, 8, 8, 3)
  images, labels = data.load_labelled_arrays(config, "train")
  assert images.shape == (7, 8, 8, 3) and sorted(labels.tolist()) == [0, 0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "WEBP"])
def test_every_format_the_folder_check_accepts_trains(tmp_path, fmt):
  # The check decodes with training's own decoders, so a file it accepts must train (a WebP
  # photo used to pass the check and then stop training at its first batch).
  from PIL import Image

  root = tmp_path / fmt
  root.mkdir()
  rng = np.random.RandomState(0)
  for i in range(4):
    array = rng.randint(0, 255, (10 + i, 12, 3), np.uint8)
    Image.fromarray(array).save(root / f"{i}.{fmt.upper() if i % 2 else fmt.lower()}", fmt)
  (root / "broken").write_bytes(b"RIFF\x00\x00\x00\x00WEBPnot really")
  config = config_lib.base_config()
  config.dataset.name = "folder"
  config.dataset.folder = str(root)
  config.dataset.image_size = 8
  config.dataset.eval_resize = 8
  config.batch_size = 4
  assert data.num_train_examples(config) == 4
  batches = _take(data.create_pretrain_iterator(config, process_index=0, process_count=1), 2)
  for b in batches:
    assert b["view_a"].shape == (4, 8, 8, 3) and np.isfinite(b["view_b"]).all()
  evaluated = list(
    data.create_eval_iterator(config, "train", batch_size=4, process_index=0, process_count=1)
  )
  assert evaluated[0]["mask"].sum() == 4
  config.dataset.eval_interpolation = "lanczos"
  with pytest.raises(ValueError, match="config.dataset.eval_interpolation"):
    data.create_pretrain_iterator(config, process_index=0, process_count=1)
  with pytest.raises(ValueError, match="config.dataset.eval_interpolation"):
    data.create_eval_iterator(config, "train", batch_size=4, process_index=0, process_count=1)


def test_empty_folder_unknown_dataset_and_bad_batch_are_clear_errors(tmp_path):
  config = config_lib.base_config()
  config.dataset.name = "folder"
  config.dataset.folder = str(tmp_path)
  with pytest.raises(ValueError, match="no files"):
    data.num_train_examples(config)
  config.dataset.name = "no_such_dataset_xyz"
  with pytest.raises(ValueError, match="config.dataset.name"):
    data.num_train_examples(config)
  config = _digits_config(batch=8000)
  with pytest.raises(ValueError, match="config.batch_size"):
    data.steps_per_epoch(config)
  config.batch_size = 12
  with pytest.raises(ValueError, match="number of devices"):
    data.check_batch_size(config, num_devices=8, num_processes=1)
  with pytest.raises(ValueError, match="number of processes"):
    data.check_batch_size(config, num_devices=2, num_processes=8)
  assert data.check_batch_size(config, num_devices=4, num_processes=2) == 6


def test_tfds_dataset_under_mock_data():
  config = config_lib.base_config()
  config.dataset.name = "cifar10"
  config.dataset.image_size = 16
  config.dataset.eval_split = "test"
  config.dataset.shuffle_buffer = 16
  config.dataset.cache = True
  config.batch_size = 8
  with tfds.testing.mock_data(num_examples=20):
    assert data.num_train_examples(config) == 20
    assert data.steps_per_epoch(config) == 2
    assert data.num_classes(config) == 10
    run = _take(data.create_pretrain_iterator(config, process_index=0, process_count=1), 3)
    resumed = next(
      data.create_pretrain_iterator(config, start_step=2, process_index=0, process_count=1)
    )
    assert run[0]["view_a"].shape == (8, 16, 16, 3) and run[0]["label"].dtype == np.int32
    for key in run[2]:
      np.testing.assert_array_equal(run[2][key], resumed[key])
    batches = list(
      data.create_eval_iterator(config, "test", batch_size=8, process_index=0, process_count=1)
    )
    assert [int(b["mask"].sum()) for b in batches] == [8, 8, 4]
    assert not batches[-1]["image"][4:].any()
    images, labels = data.load_labelled_arrays(config, "test")
    assert images.shape == (20, 16, 16, 3) and labels.shape == (20,)


def test_in_memory_eval_arrays_are_the_test_set():
  config = _digits_config(size=20)
  images, labels = data.load_labelled_arrays(config, "test")
  from barlow_jax.data import digits as datasets

  raw, raw_labels = datasets.cluttered_digits(0)["test"]
  np.testing.assert_array_equal(labels, raw_labels)
  mean, std = np.array(config.augment.mean), np.array(config.augment.std)
  np.testing.assert_allclose(images, (raw - mean) / std, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="splits"):
    data.load_labelled_arrays(config, "unlabelled")


def test_tensorflow_sees_no_gpu():
  assert tf.config.get_visible_devices("GPU") == []
  assert os.environ.get("CUDA_VISIBLE_DEVICES") == ""


def test_input_benchmark_smoke(tmp_path):
  import json

  from barlow_jax.benchmarks import input as input_benchmark

  out = tmp_path / "input.json"
  args = ["input", "--seconds", "0.2", "--batch", "8", "--cases", "cifar_32_png", "--out", str(out)]
  assert input_benchmark.main(args) == 0
  result = json.loads(out.read_text())["results"][0]
  assert result["case"] == "cifar_32_png" and result["examples_per_s"] > 0


def test_show_augmentations_draws_a_png(tmp_path):
  from barlow_jax.tools import show_augmentations

  config = _digits_config(batch=128, size=20)
  out = show_augmentations.render(config, str(tmp_path / "views.png"), pairs=4, columns=2)
  png = open(out, "rb").read()
  assert png[:8] == b"\x89PNG\r\n\x1a\n"
  image = tf.io.decode_png(png).numpy()
  assert image.shape[0] > 100 and image.shape[1] > 200 and image.std() > 10
  assert config.batch_size == 128  # The caller's config is left alone.


def test_bad_eval_resize_fails_before_pretraining_opens_the_source(tmp_path):
  # The evaluation after pretraining would fail on it: the run stops at its start instead.
  config = config_lib.base_config()
  config.dataset.name = "folder"
  config.dataset.folder = str(tmp_path / "not_there")  # Would be the error without the check.
  config.dataset.image_size = 224
  config.dataset.eval_resize = 200
  with pytest.raises(ValueError, match="config.dataset.eval_resize=200"):
    data.create_pretrain_iterator(config, process_index=0, process_count=1)


def test_grayscale_png_and_jpeg_files_become_rgb_as_pils_convert(tmp_path):
  # One-channel files are read as PIL's convert("RGB") (the reference's loader): the gray level in
  # all three channels, in pretraining and in evaluation. PNGs exactly; JPEGs within 2 levels,
  # TensorFlow's default (fast integer) IDCT against PIL's accurate one.
  from PIL import Image

  rng = np.random.RandomState(0)
  expected = []
  for i, fmt in enumerate(["PNG", "JPEG", "PNG", "JPEG"]):
    path = tmp_path / f"{i}.{fmt.lower()}"
    Image.fromarray(rng.randint(0, 255, (12, 12), np.uint8), mode="L").save(path, fmt)
    expected.append(np.asarray(Image.open(path).convert("RGB"), np.float64))
  config = config_lib.base_config()
  config.dataset.update(name="folder", folder=str(tmp_path), image_size=12, eval_resize=12)
  config.batch_size = 4
  _identity_views(config)

  def errors(image):
    return [np.abs(image.astype(np.float64) - e).max() for e in expected]

  batch = next(data.create_pretrain_iterator(config, process_index=0, process_count=1))
  for view in (*batch["view_a"], *batch["view_b"]):
    assert view.shape == (12, 12, 3) and min(errors(view)) <= 2
  (evaluated,) = data.create_eval_iterator(
    config, "train", batch_size=4, process_index=0, process_count=1
  )
  assert evaluated["image"].shape == (4, 12, 12, 3) and evaluated["mask"].all()
  for i, image in enumerate(evaluated["image"] * 255):  # In file order.
    assert errors(image)[i] <= (1e-3 if i % 2 == 0 else 2), i

"""The data package's layout: one registry of source kinds that both pipelines go through, the
old import paths, and a data side that imports no TensorFlow until a pipeline runs and no network
code at all."""

import subprocess
import sys

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from barlow_jax import config as config_lib  # noqa: E402
from barlow_jax import data  # noqa: E402
from barlow_jax.data import augment, evaluation, pretrain, sources, stream  # noqa: E402

NUM_FLAT = 24


def _flat_colours(config, split):
  """A made-up kind: 24 flat 6 x 6 images whose red channel encodes their index."""
  del config
  if split != "all":
    raise ValueError(f"flat_colours has only the split 'all', got {split!r}.")
  index = np.arange(NUM_FLAT)
  images = np.zeros((NUM_FLAT, 6, 6, 3), np.float32)
  images[..., 0] = (index * 10 / 255)[:, None, None]
  images[..., 1] = 0.5
  return stream.ArraySource(images, (index % 3).astype(np.int32))


@pytest.fixture
def flat_kind(monkeypatch):
  monkeypatch.setitem(sources.SOURCE_KINDS, "flat", sources.SourceKind(_flat_colours, ("flat",)))
  config = config_lib.base_config()
  config.dataset.name = "flat"
  config.dataset.train_split = config.dataset.eval_split = "all"
  config.dataset.image_size = 6
  config.batch_size = 8
  for view in (config.augment.view_a, config.augment.view_b):  # Views = the images themselves.
    view.update(dict(crop_area=(1.0, 1.0), crop_aspect=(1.0, 1.0), crop_method="bilinear"))
    view.update({f"{op}_prob": 0.0 for op in augment.APPLIED_KEYS})
  config.augment.mean, config.augment.std = (0.0,) * 3, (1.0,) * 3
  return config


def test_a_registered_kind_serves_both_pipelines_and_the_derived_values(flat_kind):
  config = flat_kind
  assert sources.source_kind("flat") == "flat"
  assert data.num_classes(config) == 3 and data.steps_per_epoch(config) == NUM_FLAT // 8
  iterator = pretrain.create_pretrain_iterator(config, process_index=0, process_count=1)
  seen = []
  for _ in range(NUM_FLAT // 8):  # One epoch: every image once, its label alongside.
    batch = next(iterator)
    index = np.round(batch["view_a"][:, 0, 0, 0] / 10).astype(int)
    np.testing.assert_array_equal(batch["view_a"], batch["view_b"])
    np.testing.assert_array_equal(batch["label"], index % 3)
    seen.extend(index)
  assert sorted(seen) == list(range(NUM_FLAT))
  images, labels = evaluation.load_labelled_arrays(config, "all")
  np.testing.assert_allclose(images, _flat_colours(config, "all").images, atol=1e-6)
  np.testing.assert_array_equal(labels, np.arange(NUM_FLAT) % 3)
  with pytest.raises(ValueError, match="only the split 'all'"):
    data.create_eval_iterator(config, "train", batch_size=8, process_index=0, process_count=1)


def test_names_route_to_their_kind_and_unknown_names_list_every_claimed_name(flat_kind):
  assert [sources.source_kind(n) for n in ("digits", "cluttered_digits", "folder", "cifar10")] == [
    "in_memory",
    "in_memory",
    "folder",
    "tfds",
  ]
  flat_kind.dataset.name = "no_such_dataset_anywhere"
  with pytest.raises(ValueError) as error:
    data.num_classes(flat_kind)
  assert str(error.value) == (
    "config.dataset.name='no_such_dataset_anywhere' is neither 'cluttered_digits', 'digits', "
    "'flat', 'folder' nor a TFDS dataset name (DatasetNotFoundError)."
  )


def test_the_kinds_say_what_fits_in_memory_and_count_classes_per_split(monkeypatch, tmp_path):
  names = ("digits", "cluttered_digits", "folder", "cifar10", "cifar100:3.0.2", "imagenet2012")
  assert [sources.fits_in_memory(n) for n in names] == [True, True, False, True, True, False]
  monkeypatch.setitem(sources.SOURCE_KINDS, "flat", sources.SourceKind(None, ("flat",)))
  assert not sources.fits_in_memory("flat")  # A kind holds nothing in memory unless it says so.
  for split, classes in (("train", "abc"), ("val", "ab")):
    for c in classes:
      (tmp_path / split / c).mkdir(parents=True)
      png = tf.io.encode_png(tf.fill([4, 4, 3], tf.constant(80, tf.uint8)))
      tf.io.write_file(str(tmp_path / split / c / "0.png"), png)
  config = config_lib.base_config()
  config.dataset.update(name="folder", folder=str(tmp_path), train_split="train")
  assert data.num_classes(config) == 3 and data.num_classes(config, "val") == 2


def test_the_data_side_loads_tensorflow_only_for_pipelines_and_never_network_code():
  probe = (
    "import importlib, pkgutil, sys, barlow_jax.data as d, barlow_jax.data.digits,"
    " barlow_jax.data.device_augment;"
    "bad = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules];"
    "bad and sys.exit(f'importing the package, digits, device_augment: imported {bad}');"
    "names = [m.name for m in pkgutil.iter_modules(d.__path__)];"
    "[importlib.import_module(f'barlow_jax.data.{n}') for n in names];"
    "bad = [m for m in sys.modules if m.split('.')[0] == 'flax' or m in ('barlow_jax.models', "
    "'barlow_jax.losses', 'barlow_jax.train', 'barlow_jax.evaluate', 'barlow_jax.evaluation')];"
    "sys.exit(f'importing every data module: imported {bad}' if bad else 0)"
  )
  result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:] + result.stdout

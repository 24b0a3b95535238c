"""barlow_jax.data.tfds_source: with config.dataset.class_subset a TFDS source keeps some classes,
relabelled, in every split."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from barlow_jax import config as config_lib
from barlow_jax import data
from barlow_jax.data import tfds_source

NUM = 20  # Examples served, label i % 10: each CIFAR-10 class twice.


def _as_dataset(images):
  def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
    del self, split, read_config, shuffle_files

    def example(i):
      image = images[i] if decoders is None else tf.io.encode_png(images[i])
      return {"image": image, "label": i % 10}

    return tf.data.Dataset.range(NUM).map(example)

  return as_dataset


def _config(subset: str):
  config = config_lib.base_config()
  config.dataset.name = "cifar10"
  config.dataset.image_size = 8
  config.dataset.eval_resize = 8
  config.dataset.eval_split = "test"
  config.dataset.shuffle_buffer = 16
  config.dataset.class_subset = subset
  config.batch_size = 2
  return config


def test_a_class_list_keeps_its_classes_relabelled_in_label_order(tmp_path):
  # Without its prepared files TFDS names CIFAR-10's classes "0".."9". Ids 0, 3, 8 -> new labels
  # 0, 1, 2: sorted by id, not by listing.
  subset = tmp_path / "three.txt"
  subset.write_text("# a comment line\n8 3\n0\n")
  rng = np.random.RandomState(0)
  images = tf.constant(rng.randint(0, 256, (NUM, 8, 8, 3)).astype(np.uint8))
  config = _config(str(subset))
  with tfds.testing.mock_data(num_examples=NUM, as_dataset_fn=_as_dataset(images)):
    assert data.num_train_examples(config) == 6
    assert data.num_classes(config) == 3
    _, labels = data.load_labelled_arrays(config, "test")
    np.testing.assert_array_equal(labels, [0, 1, 2, 0, 1, 2])
    batch = next(data.create_pretrain_iterator(config, process_index=0, process_count=1))
    assert set(batch["label"].tolist()) <= {0, 1, 2}
    config.dataset.class_subset = ""
    assert data.num_train_examples(config) == NUM and data.num_classes(config) == 10


def test_unknown_classes_and_lists_are_errors_naming_the_key(tmp_path):
  bad = tmp_path / "bad.txt"
  bad.write_text("3 dragon\n")
  images = tf.zeros((NUM, 8, 8, 3), tf.uint8)
  with tfds.testing.mock_data(num_examples=NUM, as_dataset_fn=_as_dataset(images)):
    with pytest.raises(ValueError, match=r"class_subset=.*bad\.txt.*1 class.*'dragon'"):
      data.num_classes(_config(str(bad)))
    with pytest.raises(ValueError, match=r"class_subset='imagenet1k'.*packaged class list"):
      data.num_classes(_config("imagenet1k"))


def test_the_packaged_imagenet100_list_is_100_imagenet_classes():
  names = tfds_source.class_subset_names("imagenet100")
  assert len(names) == len(set(names)) == 100
  assert names[:3] == ["n02869837", "n01749939", "n02488291"]  # solo-learn's order.
  label = tfds.builder("imagenet2012").info.features["label"]
  assert label.num_classes == 1000 and set(names) <= set(label.names)

"""barlow_jax.data.evaluation: the evaluation pipeline at any image_size, for every source kind.

Known answers from a PIL restatement of the reference's evaluation transform (torchvision
`Resize` then `CenterCrop` on PIL images, bilinear), at crop sizes below and above the images'
own: in-memory arrays (static shapes), a folder and a TFDS split (decoded per image).
"""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from barlow_jax import config as config_lib
from barlow_jax.data import evaluation, sources


def _config(name: str, size: int, resize: int = 0, **dataset):
  config = config_lib.base_config()
  config.dataset.name = name
  config.dataset.image_size = size
  config.dataset.eval_resize = resize
  config.dataset.update(dataset)
  config.augment.mean = (0.0, 0.0, 0.0)  # Identity normalisation: the output is the pixels.
  config.augment.std = (1.0, 1.0, 1.0)
  return config


def _pil_resize(image: np.ndarray, hw) -> np.ndarray:
  """PIL's bilinear resize to (h, w), channel by channel in float ("F" images), in [0, 1].

  Float keeps the known answer exact: PIL's 8-bit path rounds to uint8 after each of its two
  passes, up to 0.85 / 255 away from the exact resample here on 12 px crops of noise.
  """
  h, w = hw
  image = image.astype(np.float32) / 255 if image.dtype == np.uint8 else image
  channels = [
    np.asarray(Image.fromarray(image[..., c], mode="F").resize((w, h), Image.BILINEAR))
    for c in range(image.shape[-1])
  ]
  return np.stack(channels, -1).astype(np.float64)


def _reference_eval(image: np.ndarray, size: int, resize: int | None) -> np.ndarray:
  """torchvision Resize(resize) + CenterCrop(size) (resize None: Resize((size, size)))."""
  h, w = image.shape[:2]
  if resize is None:
    return _pil_resize(image, (size, size))
  # torchvision Resize(int): short side -> resize, long side int(resize * long / short).
  if h <= w:
    hw = (resize, int(resize * w / h))
  else:
    hw = (int(resize * h / w), resize)
  resized = image if hw == (h, w) else _pil_resize(image, hw)
  top = int(round((hw[0] - size) / 2.0))  # CenterCrop's offsets: Python's round.
  left = int(round((hw[1] - size) / 2.0))
  return resized[top : top + size, left : left + size]


def _first_batch(config, split: str, n: int) -> np.ndarray:
  it = evaluation.create_eval_iterator(
    config, split, batch_size=n, process_index=0, process_count=1
  )
  batch = next(it)
  assert batch["mask"].all()
  return batch["image"]


def _assert_like_pil(ours: np.ndarray, sources, size: int, resize: int | None):
  assert ours.shape == (len(sources), size, size, 3)
  want = np.stack([_reference_eval(s, size, resize) for s in sources])
  err = np.abs(ours.astype(np.float64) - want)
  assert err.max() < 2e-5, (size, resize, err.max())  # float32 arithmetic on [0, 1] pixels.


# Crop sizes below and above the images' own, resized straight (< 128) or through
# config.dataset.eval_resize (>= 128: the short side to eval_resize, then the centre crop).
SIZES = [(12, 0), (32, 0), (128, 146)]


def test_in_memory_arrays_evaluate_at_any_image_size_like_pil():
  # Arrays in memory have a static 20 x 20 shape: a crop size other than 20 used to fail while
  # the pipeline was being built (an EnsureShape of the no-resize branch).
  test_split = sources.open_source(_config("cluttered_digits", 20), "test")  # Rendered once.
  images, labels = test_split.images, test_split.labels
  assert images.shape[1:] == (20, 20, 3)
  for size, resize in SIZES:
    config = _config("cluttered_digits", size, resize)
    ours = _first_batch(config, "test", 4)
    _assert_like_pil(ours, images[:4], size, evaluation.eval_resize(config))
  # The whole split in memory, as the linear probe and the final table read it.
  x, y = evaluation.load_labelled_arrays(_config("cluttered_digits", 12), "test")
  assert x.shape == (len(images), 12, 12, 3)
  np.testing.assert_array_equal(y, labels)
  _assert_like_pil(x[-3:], images[-3:], 12, None)


def test_folder_images_evaluate_at_any_image_size_like_pil(tmp_path):
  rng = np.random.RandomState(0)
  # Portrait and landscape, both odd sides: the centre crop's half-pixel offsets round to even.
  shapes = [(20, 26), (27, 21), (150, 171), (173, 149)]
  sources = [rng.randint(0, 256, (*hw, 3)).astype(np.uint8) for hw in shapes]
  for i, array in enumerate(sources):
    Image.fromarray(array).save(tmp_path / f"{i}.png")
  for size, resize in SIZES:
    config = _config("folder", size, resize, folder=str(tmp_path))
    ours = _first_batch(config, "train", len(sources))
    _assert_like_pil(ours, sources, size, evaluation.eval_resize(config))


def _tfds_split(sources):
  """An `as_dataset_fn` for `tfds.testing.mock_data` serving `sources` as PNGs (labels i)."""
  images = tf.constant(np.stack(sources))

  def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
    del self, split, read_config, shuffle_files

    def example(i):
      # The pipeline reads encoded images as bytes (SkipDecoding) and decodes them itself.
      image = images[i] if decoders is None else tf.io.encode_png(images[i])
      return {"image": image, "label": i}

    return tf.data.Dataset.range(len(sources)).map(example)

  return as_dataset


def test_tfds_images_evaluate_at_any_image_size_like_pil():
  rng = np.random.RandomState(1)
  sources = [rng.randint(0, 256, (32, 32, 3)).astype(np.uint8) for _ in range(3)]
  with tfds.testing.mock_data(num_examples=3, as_dataset_fn=_tfds_split(sources)):
    for size, resize in [(12, 0), (48, 0), (128, 146)]:
      config = _config("cifar10", size, resize)
      ours = _first_batch(config, "test", 3)
      _assert_like_pil(ours, sources, size, evaluation.eval_resize(config))


def test_sizes_that_cannot_work_name_the_config_key_before_the_source_opens():
  # The dataset does not exist: the size error must come first, before the source is opened.
  config = _config("no_such_dataset_xyz", 224, 200)
  with pytest.raises(ValueError, match=r"config\.dataset\.eval_resize=200 .*image_size=224"):
    evaluation.create_eval_iterator(config, "test", batch_size=4, process_index=0, process_count=1)
  with pytest.raises(ValueError, match=r"config\.dataset\.eval_resize"):
    evaluation.load_labelled_arrays(_config("cluttered_digits", 224, 200), "test")
  config = _config("no_such_dataset_xyz", 0)
  with pytest.raises(ValueError, match=r"config\.dataset\.image_size=0"):
    evaluation.eval_preprocessing(config)
  config = _config("no_such_dataset_xyz", 224, 256, eval_interpolation="lanczos")
  with pytest.raises(ValueError, match=r"config\.dataset\.eval_interpolation"):
    evaluation.eval_preprocessing(config)
  # Equal sizes fit: the centre crop is the whole resized image.
  assert evaluation.eval_preprocessing(_config("x", 224, 224)) == (224, 224, "bilinear")

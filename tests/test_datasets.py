"""The offline digit datasets: deterministic, fast, the promised splits, colours and geometry."""

import subprocess
import sys
import time

import numpy as np

from barlow_jax.data import digits as datasets


def test_cluttered_digits_is_deterministic_fast_and_shaped():
  start = time.perf_counter()
  first = datasets.cluttered_digits(seed=0)
  elapsed = time.perf_counter() - start
  assert elapsed < 10.0, f"generation took {elapsed:.1f} s"  # ~1.5 s alone; generous under load.
  again = datasets.cluttered_digits(seed=0)
  other = datasets.cluttered_digits(seed=1)
  for split, n in (("train", 1437 * 5), ("test", 360 * 3)):
    images, labels = first[split]
    assert images.shape == (n, 20, 20, 3) and images.dtype == np.float32
    assert labels.shape == (n,) and labels.dtype == np.int32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert set(np.unique(labels).tolist()) == set(range(10))
    np.testing.assert_array_equal(images, again[split][0])
    np.testing.assert_array_equal(labels, other[split][1])  # The split ignores the render seed.
    assert not np.allclose(images, other[split][0])


def test_split_is_stratified_disjoint_and_fixed():
  _, labels = datasets.load_digits()
  train, test = datasets.stratified_split(labels)
  assert len(train) == 1437 and len(test) == 360
  assert not set(train.tolist()) & set(test.tolist())
  assert len(set(train.tolist()) | set(test.tolist())) == len(labels)
  counts = np.bincount(labels[test], minlength=10)
  expected = np.bincount(labels) * 360 / len(labels)
  assert np.all(np.abs(counts - expected) < 1.0)


def test_colours_keep_their_distance_and_luma_gap():
  rng = np.random.RandomState(0)
  background, foreground = datasets.colours(rng, 2000)
  assert np.all(np.linalg.norm(foreground - background, axis=1) >= 0.6)
  luma_gap = (foreground - background) @ np.array([0.299, 0.587, 0.114])
  assert np.all(np.abs(luma_gap) >= 0.3)
  assert 0.2 < np.mean(luma_gap > 0) < 0.8  # Both polarities occur.


def test_rendered_digit_covers_a_plausible_box_on_a_flat_background():
  glyph = np.zeros((1, 8, 8))
  glyph[0, 1:7, 2:6] = 1.0  # A solid block: 6 x 4 of the 8 x 8 cell.
  one = np.ones(1)
  coverage = datasets.bilinear_place(glyph, 4 * one, 2 * one, 16 * one, 8 * one, 20)[0]
  # The block spans rows 4 + 16 * [1/8, 7/8] = [6, 18) and columns 2 + 8 * [2/8, 6/8] = [4, 8).
  assert coverage[8:16, 5:7].min() > 0.99
  assert coverage[:5].max() == 0 and coverage[19:].max() == 0 and coverage[:, 9:].max() == 0
  np.testing.assert_allclose(coverage.sum(), 12 * 4, rtol=0.1)


def test_digits_plain_upsampled():
  data = datasets.digits(image_size=16)
  images, labels = data["train"]
  assert images.shape == (1437, 16, 16, 3) and data["test"][0].shape == (360, 16, 16, 3)
  assert images.min() >= 0 and images.max() <= 1
  np.testing.assert_array_equal(images[..., 0], images[..., 2])  # Gray, replicated.
  # Upsampling keeps the ink: the mean intensity matches the raw 8x8 digits'.
  raw, raw_labels = datasets.load_digits()
  train, _ = datasets.stratified_split(raw_labels)
  np.testing.assert_array_equal(labels, raw_labels[train])
  np.testing.assert_allclose(images.mean(), raw[train].mean(), rtol=0.1)


def test_importing_datasets_loads_no_tensorflow():
  probe = (
    "import sys, barlow_jax.data.digits;"
    "bad = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules];"
    "sys.exit(f'imported {bad}' if bad else 0)"
  )
  result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr + result.stdout

"""The kNN monitor's weighted vote against a float64 NumPy restatement at small temperatures."""

import numpy as np
import pytest

from barlow_jax.evaluation import knn


def _numpy_predictions(train_x, train_y, test_x, k, t, num_classes):
  """exp(similarity / t) votes in float64 (exp(1 / 0.005) = 7e86 is finite there)."""

  def norm(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

  sims = norm(test_x.astype(np.float64)) @ norm(train_x.astype(np.float64)).T
  preds = []
  for row in sims:
    idx = np.argsort(-row, kind="stable")[:k]
    votes = np.zeros(num_classes)
    np.add.at(votes, train_y[idx], np.exp(row[idx] / t))
    assert np.all(np.isfinite(votes))
    preds.append(np.argmax(votes))
  return np.array(preds)


@pytest.mark.parametrize("temperature", [0.005, 0.01, 0.07])
def test_small_temperatures_give_the_exact_decisions(temperature):
  rng = np.random.default_rng(0)
  # Separable clusters: every decision is the true class (1.000 at T = 0.07; float32's
  # exp(1 / T) overflows below T ~ 0.0113, which gave 0.010 at T = 0.01 and 0.000 at 0.005).
  centres = 10.0 * np.eye(8)[:4]
  train_y, test_y = rng.integers(0, 4, 300), rng.integers(0, 4, 80)
  train_x = centres[train_y] + rng.normal(size=(300, 8))
  test_x = centres[test_y] + rng.normal(size=(80, 8))
  expected = _numpy_predictions(train_x, train_y, test_x, 50, temperature, 4)
  assert np.all(expected == test_y)
  got = knn.knn_accuracy(
    train_x, train_y, test_x, test_y, num_classes=4, k=50, temperature=temperature
  )
  assert got == 1.0
  # Overlapping classes: with the exact decisions as labels, every decision must agree.
  train_x, test_x = rng.normal(size=(200, 6)), rng.normal(size=(60, 6))
  train_y = rng.integers(0, 3, 200)
  expected = _numpy_predictions(train_x, train_y, test_x, 20, temperature, 3)
  got = knn.knn_accuracy(
    train_x, train_y, test_x, expected, num_classes=3, k=20, temperature=temperature
  )
  assert got == 1.0

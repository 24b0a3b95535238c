"""VOC07 average precision against hand-computed answers and sklearn; the per-class SVMs reach
mAP 1.0 on separable features and pick the cost that cross-validates best."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score
from sklearn.model_selection import cross_val_score
from sklearn.svm import LinearSVC

from barlow_jax.evaluation import voc07

# Ranked by score: hit, miss, [difficult], miss, hit, hit, miss, hit (4 positives). Without the
# difficult one, precision / recall at each rank are
#   P = 1, 1/2, 1/3, 2/4, 3/5, 3/6, 4/7        R = 1/4, 1/4, 1/4, 2/4, 3/4, 3/4, 1.
_SCORES = np.array([0.9, 0.8, 0.75, 0.7, 0.6, 0.5, 0.4, 0.3])
_TARGETS = np.array([1, 0, -1, 0, 1, 1, 0, 1])
# uninterpolated: (1 + 1/2 + 3/5 + 4/7) / 4 = 187/280 (precision at each hit).
# all-point: the envelope at recall 1/4, 2/4, 3/4, 1 is 1, 3/5, 3/5, 4/7 -> (1 + 6/5 + 4/7) / 4
#   = 97/140.
# 11-point: recall levels 0, .1, .2 -> 1; .3 ... .7 -> 3/5; .8, .9, 1 -> 4/7
#   -> (3 + 5 * 3/5 + 3 * 4/7) / 11 = 54/77.
_HAND = {"uninterpolated": 187 / 280, "all_point": 97 / 140, "11_point": 54 / 77}


@pytest.mark.parametrize("method", voc07.AP_METHODS)
def test_average_precision_hand_computed(method):
  assert voc07.average_precision(_SCORES, _TARGETS, method=method) == pytest.approx(
    _HAND[method], abs=1e-12
  )


def test_difficult_examples_are_left_out_and_all_three_definitions_differ():
  # A difficult example ranked first changes nothing; counted as a miss it would.
  scores = np.concatenate([[2.0], _SCORES])
  targets = np.concatenate([[-1], _TARGETS])
  assert voc07.average_precision(scores, targets) == pytest.approx(97 / 140)
  assert voc07.average_precision(scores, np.where(targets == -1, 0, targets)) < 0.6
  assert len({round(v, 6) for v in _HAND.values()}) == 3


def test_uninterpolated_matches_sklearn_and_the_envelope_never_lowers_it():
  rng = np.random.default_rng(0)
  for _ in range(20):
    n = int(rng.integers(5, 60))
    targets = (rng.random(n) < 0.3).astype(int)
    targets[rng.integers(n)] = 1
    scores = rng.normal(size=n) + targets * rng.random()
    ap = voc07.average_precision(scores, targets, method="uninterpolated")
    assert ap == pytest.approx(average_precision_score(targets, scores), abs=1e-12)
    assert voc07.average_precision(scores, targets) >= ap - 1e-12
    assert voc07.average_precision(scores, targets, method="11_point") >= 0.0


def test_perfect_ranking_and_mean_over_classes_with_a_class_without_positives():
  targets = np.array([[1, 0, 0], [1, 1, 0], [0, -1, 0], [0, 1, 0]])
  scores = np.array([[3.0, 0.0, 1.0], [2.0, 2.0, 0.0], [1.0, 9.0, 2.0], [0.0, 1.0, 3.0]])
  mean, per_class = voc07.mean_average_precision(scores, targets, method="11_point")
  assert per_class[:2].tolist() == [1.0, 1.0] and np.isnan(per_class[2])
  assert mean == 1.0
  with pytest.raises(ValueError, match="positive"):
    voc07.average_precision(scores[:, 2], targets[:, 2])
  with pytest.raises(ValueError, match="method"):
    voc07.average_precision(_SCORES, _TARGETS, method="voc2012")


def _separable(n, num_classes, dim, rng):
  """Features whose first num_classes coordinates say which classes are present."""
  targets = (rng.random((n, num_classes)) < 0.4).astype(int)
  targets[np.arange(n), rng.integers(num_classes, size=n)] = 1
  features = 0.02 * rng.normal(size=(n, dim))
  features[:, :num_classes] += targets
  features[:, num_classes:] += 0.5  # Non-zero background, so the bias matters.
  return features, targets


def test_svms_on_separable_features_reach_map_one():
  rng = np.random.default_rng(1)
  train_f, train_t = _separable(60, 3, 12, rng)
  test_f, test_t = _separable(40, 3, 12, rng)
  test_t[:5, 0] = np.where(test_t[:5, 0] == 0, -1, test_t[:5, 0])  # Some difficult ones.
  out = voc07.svm_evaluation(
    train_f, train_t, test_f, test_t, costs=(0.01, 1.0, 10.0), folds=3, n_jobs=1
  )
  assert out["map"] == out["map_11_point"] == out["map_uninterpolated"] == 1.0
  assert len(out["ap"]) == len(out["costs"]) == 3
  assert all(c in (0.01, 1.0, 10.0) for c in out["costs"])


def test_cost_is_the_cross_validated_best():
  rng = np.random.default_rng(2)
  features, targets = _separable(45, 2, 8, rng)
  features += 0.4 * rng.normal(size=features.shape)  # Not separable: costs now differ.
  costs = (1e-3, 0.1, 10.0)
  svms = voc07.train_svms(features, targets, costs=costs, folds=3, n_jobs=1)
  x = features / (np.linalg.norm(features, axis=1, keepdims=True) + 1e-5)
  for c in range(2):
    y = np.where(targets[:, c] > 0, 1, -1)
    expected = [
      cross_val_score(
        LinearSVC(C=cost, class_weight={1: 2.0, -1: 1.0}, dual=True, max_iter=2000, random_state=0),
        x,
        y,
        cv=3,
        scoring="average_precision",
      ).mean()
      for cost in costs
    ]
    np.testing.assert_allclose(svms["cv_ap"][c], expected, rtol=1e-10)
    assert svms["costs"][c] == costs[int(np.argmax(expected))]


def test_svm_input_errors_name_the_problem():
  features = np.ones((10, 4))
  targets = np.zeros((10, 2), int)
  targets[:5, 0] = 1
  with pytest.raises(ValueError, match="class 1 has 0 positive"):
    voc07.train_svms(features, targets, costs=(1.0,), n_jobs=1)
  with pytest.raises(ValueError, match=r"\[N, C\]"):
    voc07.train_svms(features, targets[:, 0], n_jobs=1)


@pytest.mark.parametrize("method", voc07.AP_METHODS)
def test_tied_scores_give_one_point_whatever_their_order(method):
  # 100 equal scores, 10 positives: one threshold, precision 0.1 at recall 1 (sklearn: 0.1).
  rng = np.random.default_rng(3)
  targets = np.zeros(100, int)
  targets[:10] = 1
  for order in (targets, targets[::-1], rng.permutation(targets)):
    assert voc07.average_precision(np.zeros(100), order, method=method) == pytest.approx(0.1)
  assert average_precision_score(targets, np.zeros(100)) == pytest.approx(0.1)
  # Ties among other scores: permuting the examples changes nothing.
  scores = np.round(rng.normal(size=60), 1)
  targets = (rng.random(60) < 0.3).astype(int)
  targets[:3] = [1, -1, 0]
  ap = voc07.average_precision(scores, targets, method=method)
  for _ in range(5):
    perm = rng.permutation(60)
    assert voc07.average_precision(scores[perm], targets[perm], method=method) == ap


def test_tied_scores_uninterpolated_matches_sklearn_and_the_curve_has_one_point_per_score():
  rng = np.random.default_rng(4)
  for _ in range(20):
    n = int(rng.integers(5, 60))
    targets = (rng.random(n) < 0.3).astype(int)
    targets[rng.integers(n)] = 1
    scores = np.round(rng.normal(size=n) + targets * rng.random(), 1)  # Many ties.
    ap = voc07.average_precision(scores, targets, method="uninterpolated")
    assert ap == pytest.approx(average_precision_score(targets, scores), abs=1e-12)
    precision, recall = voc07.precision_recall(scores, targets)
    assert len(precision) == len(recall) == len(np.unique(scores))
    assert voc07.average_precision(scores, targets) >= ap - 1e-12


def test_difficult_training_images_are_left_out_of_that_class_svm():
  rng = np.random.default_rng(5)
  features, targets = _separable(48, 2, 8, rng)
  features += 0.2 * rng.normal(size=features.shape)
  # Difficult images that look like positives of class 0 and like negatives of class 1: as
  # positives or as negatives of their class they would move its SVM.
  targets[:6, 0] = -1
  features[:6, 0] += 1.0
  targets[10:14, 1] = -1
  features[10:14, 1] -= 1.0
  costs = (0.1, 1.0)
  svms = voc07.train_svms(features, targets, costs=costs, folds=3, n_jobs=1)
  for c in range(2):
    keep = targets[:, c] != -1
    alone = voc07.train_svms(features[keep], targets[keep][:, [c]], costs=costs, folds=3)
    clf, ref = svms["classifiers"][c], alone["classifiers"][0]
    np.testing.assert_allclose(clf.coef_, ref.coef_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(clf.intercept_, ref.intercept_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(svms["cv_ap"][c], alone["cv_ap"][0], rtol=1e-10)
  # Only 2 non-difficult positives left: too few for 3 folds, and the message says why.
  targets[:, 0] = np.where(np.arange(48) < 2, 1, -1)
  with pytest.raises(ValueError, match=r"class 0 has 2 positive and 0 negative .*difficult"):
    voc07.train_svms(features, targets, costs=costs, folds=3, n_jobs=1)

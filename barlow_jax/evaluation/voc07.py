"""VOC07 multi-label classification on frozen features: per-class linear SVMs and average precision.

The protocol of the Barlow Twins paper's VOC07 number (Sec. 4, Table 3: 86.2 mAP), which follows
PIRL and Goyal et al. 2019 ("Scaling and benchmarking self-supervised visual representation
learning", code: facebookresearch/fair_self_supervision_benchmark, tools/svm/; VISSL's
vissl/utils/svm_utils/ is the same):

- targets per image and class: 1 present, 0 absent, -1 "difficult" (the class occurs only in
  objects marked difficult; the VOC devkit's 0);
- features L2-normalised (`x / (||x|| + 1e-5)`);
- one `sklearn.svm.LinearSVC` per class (squared hinge, L2, dual, tol 1e-4, max_iter 2000, class
  weight 2 on positives); a class's difficult images are left out of its training, as out of
  its AP (svm_helper.py `get_cls_feats_labels`, VISSL's `SVMTrainer._get_cls_feats_labels`);
- the cost C per class is the one with the highest mean average precision (sklearn's
  "average_precision" scorer) over a 3-fold cross-validation on trainval, among
  `VOC07_COSTS`; the SVM is then refit on the whole of trainval with that C;
- test AP per class with the difficult images left out; mAP = mean over the 20 classes.

Which AP: the benchmark code computes the all-point interpolated AP (the area under the
precision envelope, the VOC devkit's definition from 2010 on), so that is the headline `map`
here and the one to compare with 86.2. The VOC2007 devkit itself (VOCevalcls.m) averages the
envelope at 11 recall levels; `average_precision(..., method="11_point")` is that, reported
beside it, together with the uninterpolated AP (sklearn's `average_precision_score`).
"""

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

AP_METHODS = ("all_point", "11_point", "uninterpolated")

# Goyal et al.'s command line (--costs_list 1e-7,...,100) plus the 0.5**4 ... 0.5**19 that their
# tools/svm/svm_helper.py `parse_cost_list` always appends.
VOC07_COSTS = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0) + tuple(
  0.5**k for k in range(4, 20)
)


# ---------------------------------------------------------------------------------------------
# Average precision.


def _counts_at_thresholds(scores, targets) -> tuple[np.ndarray, np.ndarray, int]:
  """True and false positives at each distinct score, highest first, and the positives' count.

  Examples whose scores tie are accepted or refused together (sklearn's precision_recall_curve
  thresholds), so the curve does not depend on the order of tied examples.
  """
  scores = np.asarray(scores, np.float64).reshape(-1)
  targets = np.asarray(targets).reshape(-1)
  if scores.shape != targets.shape:
    raise ValueError(f"scores {scores.shape} and targets {targets.shape} must have one shape")
  keep = targets != -1  # Difficult: neither a hit nor a false alarm (VOCevalcls.m).
  scores, hits = scores[keep], targets[keep] > 0
  num_positives = int(hits.sum())
  if num_positives == 0:
    raise ValueError("average precision is undefined without a positive example")
  order = np.argsort(-scores, kind="stable")
  scores, hits = scores[order], hits[order]
  # The last rank of each run of equal scores: the curve's points.
  last = np.append(np.flatnonzero(np.diff(scores)), len(scores) - 1)
  return np.cumsum(hits)[last], np.cumsum(~hits)[last], num_positives


def precision_recall(scores, targets) -> tuple[np.ndarray, np.ndarray]:
  """Precision and recall at each distinct score value, from the highest score down.

  The point of a score s counts every example scored >= s, so tied examples enter together and
  the order of ties does not matter (sklearn's `precision_recall_curve`, in reverse). Without
  ties these are the precision and recall at each rank.

  Args:
    scores: [N] float, higher = more confident the class is present.
    targets: [N] int, 1 present, 0 absent, -1 ignored (VOC "difficult": dropped).

  Returns:
    (precision [M], recall [M]) float64, M = number of distinct scores of the non-ignored
    examples.

  Raises:
    ValueError: on shape mismatch, or when no target is positive.
  """
  tp, fp, num_positives = _counts_at_thresholds(scores, targets)
  return tp / (tp + fp), tp / num_positives


def average_precision(scores, targets, *, method: str = "all_point") -> float:
  """Average precision of one class's scores.

  Args:
    scores: [N] float. targets: [N] int in {1, 0, -1} (-1 = ignored), see `precision_recall`.
    method:
      "all_point": area under the precision envelope p(r) = max precision at recall >= r,
        summed over the recall steps (VOC devkit 2010+; Goyal et al. 2019's `calculate_ap`);
      "11_point": mean of the envelope at recall 0, 0.1, ..., 1 (VOC2007 devkit VOCevalcls.m;
        the levels are np.arange(0, 1.1, 0.1), as the devkit's Python ports use);
      "uninterpolated": sum over the recall steps of (recall step) x precision, no envelope
        (sklearn.metrics.average_precision_score).
      All three read the curve at distinct score values only (`precision_recall`): tied scores
      give one point, whatever their order (all zeros with 10 positives in 100: AP 0.1).

  Returns:
    AP in [0, 1].
  """
  if method not in AP_METHODS:
    raise ValueError(f"method={method!r}: use one of {AP_METHODS}")
  precision, recall = precision_recall(scores, targets)
  if method == "uninterpolated":
    steps = np.diff(recall, prepend=0.0)
    return float(np.sum(steps * precision))
  # The envelope: the best precision at this recall or any higher one.
  envelope = np.maximum.accumulate(precision[::-1])[::-1]
  if method == "11_point":
    levels = np.arange(0.0, 1.1, 0.1)
    points = [envelope[recall >= t][0] if np.any(recall >= t) else 0.0 for t in levels]
    return float(np.mean(points))
  steps = np.diff(recall, prepend=0.0)
  return float(np.sum(steps * envelope))


def mean_average_precision(
  scores, targets, *, method: str = "all_point"
) -> tuple[float, np.ndarray]:
  """Mean over classes of `average_precision`.

  Args:
    scores: [N, C] float. targets: [N, C] int in {1, 0, -1}.

  Returns:
    (mAP over the classes with a positive example, per-class AP [C] with NaN for a class
    without one).
  """
  scores, targets = np.asarray(scores), np.asarray(targets)
  if scores.ndim != 2 or scores.shape != targets.shape:
    raise ValueError(f"scores and targets must both be [N, C], got {scores.shape}, {targets.shape}")
  per_class = np.full(scores.shape[1], np.nan)
  for c in range(scores.shape[1]):
    if np.any(targets[:, c] > 0):
      per_class[c] = average_precision(scores[:, c], targets[:, c], method=method)
  if np.all(np.isnan(per_class)):
    raise ValueError("no class has a positive example in the evaluation targets")
  return float(np.nanmean(per_class)), per_class


# ---------------------------------------------------------------------------------------------
# Per-class linear SVMs.


def l2_normalize(features) -> np.ndarray:
  """[N, D] -> float64 rows divided by (their L2 norm + 1e-5) (Goyal et al.'s svm_helper)."""
  x = np.asarray(features, np.float64)
  return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-5)


def _svm(cost: float, *, positive_weight: float, max_iter: int, seed: int):
  from sklearn.svm import LinearSVC

  return LinearSVC(
    C=cost,
    class_weight={1: positive_weight, -1: 1.0},
    penalty="l2",
    loss="squared_hinge",
    dual=True,
    tol=1e-4,
    max_iter=max_iter,
    intercept_scaling=1.0,
    random_state=seed,
  )


def _cross_validated_ap(features, labels, cost, *, folds, svm_kwargs) -> float:
  from sklearn.exceptions import ConvergenceWarning
  from sklearn.model_selection import cross_val_score

  with warnings.catch_warnings():
    # Large costs hit max_iter on some folds, as they do in the benchmark; the CV picks among
    # whatever the capped solver reaches, so the warning would only be noise here.
    warnings.simplefilter("ignore", ConvergenceWarning)
    scores = cross_val_score(
      _svm(cost, **svm_kwargs), features, labels, cv=folds, scoring="average_precision"
    )
  return float(np.mean(scores))


def _fit(features, labels, cost, svm_kwargs):
  from sklearn.exceptions import ConvergenceWarning

  with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    return _svm(cost, **svm_kwargs).fit(features, labels)


def train_svms(
  train_features,
  train_targets,
  *,
  costs: Sequence[float] = VOC07_COSTS,
  folds: int = 3,
  positive_weight: float = 2.0,
  max_iter: int = 2000,
  n_jobs: int = 1,
  seed: int = 0,
) -> dict[str, Any]:
  """One linear SVM per class, its cost chosen by k-fold cross-validated AP (see module doc).

  Args:
    train_features: [N, D] float (L2-normalised here).
    train_targets: [N, C] int in {1, 0, -1}: 1 the SVM's positives, 0 its negatives; -1
      ("difficult") images are left out of that class's SVM (cross-validation and fit).
    costs: candidate C values. folds: cross-validation folds (stratified, unshuffled: sklearn's
      default for a classifier, as the benchmark).
    positive_weight: class weight of the positives (negatives 1).
    n_jobs: joblib workers over (class, cost) pairs (-1 = all cores).

  Returns:
    {"classifiers": C fitted LinearSVCs, "costs": [C] chosen cost, "cv_ap": [C, len(costs)]}.

  Raises:
    ValueError: bad shapes, or a class with fewer positives or negatives than `folds` (difficult
      images not counted).
  """
  from joblib import Parallel, delayed

  x = l2_normalize(train_features)
  t = np.asarray(train_targets)
  if x.ndim != 2 or t.ndim != 2 or len(x) != len(t):
    raise ValueError(
      f"train_features must be [N, D] and train_targets [N, C], got {x.shape}, {t.shape}"
    )
  if not costs:
    raise ValueError("config.transfer.svm_costs is empty")
  # Per class: its non-difficult images and their SVM labels (1 present, -1 absent).
  data = [(x[t[:, c] != -1], np.where(t[t[:, c] != -1, c] > 0, 1, -1)) for c in range(t.shape[1])]
  for c, (_, y) in enumerate(data):
    num_pos, num_neg = int(np.sum(y == 1)), int(np.sum(y == -1))
    if min(num_pos, num_neg) < folds:
      raise ValueError(
        f"class {c} has {num_pos} positive and {num_neg} negative training images (difficult "
        f"ones left out): {folds}-fold cross-validation (config.transfer.svm_folds) needs at "
        f"least {folds} of each"
      )
  svm_kwargs = dict(positive_weight=float(positive_weight), max_iter=int(max_iter), seed=seed)
  pairs = [(c, cost) for c in range(t.shape[1]) for cost in costs]
  cv = Parallel(n_jobs=n_jobs)(
    delayed(_cross_validated_ap)(*data[c], cost, folds=folds, svm_kwargs=svm_kwargs)
    for c, cost in pairs
  )
  cv_ap = np.asarray(cv).reshape(t.shape[1], len(costs))
  chosen = [float(costs[i]) for i in np.argmax(cv_ap, axis=1)]
  classifiers = Parallel(n_jobs=n_jobs)(
    delayed(_fit)(*data[c], chosen[c], svm_kwargs) for c in range(t.shape[1])
  )
  logging.info("VOC07 SVMs: chosen costs %s", chosen)
  return {"classifiers": classifiers, "costs": chosen, "cv_ap": cv_ap}


def svm_scores(classifiers, features) -> np.ndarray:
  """[N, D] features -> [N, C] SVM decision values (features L2-normalised as in training)."""
  x = l2_normalize(features)
  return np.stack([clf.decision_function(x) for clf in classifiers], axis=1)


def svm_evaluation(
  train_features, train_targets, test_features, test_targets, **svm_kwargs
) -> dict[str, Any]:
  """`train_svms` on trainval, then test mAP with every AP definition of `AP_METHODS`.

  Returns:
    {"map": all-point mAP, "map_11_point", "map_uninterpolated", "ap" / "ap_11_point" /
    "ap_uninterpolated": per-class lists, "costs": chosen costs, "cv_ap": per-class best
    cross-validation AP}, APs in [0, 1].
  """
  svms = train_svms(train_features, train_targets, **svm_kwargs)
  scores = svm_scores(svms["classifiers"], test_features)
  out: dict[str, Any] = {}
  for method in AP_METHODS:
    suffix = "" if method == "all_point" else f"_{method}"
    mean, per_class = mean_average_precision(scores, test_targets, method=method)
    out[f"map{suffix}"] = mean
    out[f"ap{suffix}"] = [None if np.isnan(v) else float(v) for v in per_class]
  out["costs"] = svms["costs"]
  out["cv_ap"] = [float(v) for v in svms["cv_ap"].max(axis=1)]
  return out

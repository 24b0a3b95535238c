"""Evaluation: metrics against NumPy restatements, probes that reach known answers, subsets."""

import jax
import numpy as np
import pytest

from barlow_jax import evaluate
from barlow_jax.evaluation import features, final_table, finetune, knn, linear_probe


def _separable_linear_data(rng, n, d, c, margin):
  w = rng.normal(size=(d, c))
  x = rng.normal(size=(4 * n, d))
  scores = x @ w
  top2 = np.sort(scores, axis=1)[:, -2:]
  keep = (top2[:, 1] - top2[:, 0]) > margin  # Away from the decision boundaries.
  x = x[keep][:n]
  return x.astype(np.float32), np.argmax(x @ w, axis=1).astype(np.int32)


def test_topk_accuracy_hand_made():
  logits = np.array(
    [
      [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # label 6: top-1 hit.
      [6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # label 4: rank 5, top-5 hit only.
      [6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # label 5: rank 6, miss.
      [0.0, 9.0, 0.5, 0.2, 0.1, 0.3, 0.4],  # label 2: rank 2.
    ],
    np.float32,
  )
  labels = np.array([6, 4, 5, 2])
  assert float(features.topk_accuracy(logits, labels, 1)) == pytest.approx(0.25)
  assert float(features.topk_accuracy(logits, labels, 2)) == pytest.approx(0.5)
  assert float(features.topk_accuracy(logits, labels, 5)) == pytest.approx(0.75)
  mask = np.array([True, True, False, False])
  assert float(features.topk_accuracy(logits, labels, 5, mask)) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="k must be"):
    features.topk_accuracy(logits, labels, 8)


def test_topk_counts_hand_made():
  logits = np.array(
    [
      [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # label 6: top-1 hit.
      [6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # label 4: rank 5, top-5 hit only.
      [6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # label 0: a hit, but masked out.
      [0.0, 9.0, 0.5, 0.2, 0.1, 0.3, 0.4],  # label 2: rank 2.
    ],
    np.float32,
  )
  labels, mask = np.array([6, 4, 0, 2]), np.array([True, True, False, True])
  np.testing.assert_allclose(features.topk_counts(logits, labels, mask), [1.0, 3.0, 3.0])
  # Fewer than 5 classes: "top-5" is top-C, every unmasked row a hit.
  np.testing.assert_allclose(features.topk_counts(logits[:, :3], labels % 3, mask), [0.0, 3.0, 3.0])


def _knn_numpy(train_x, train_y, test_x, k, t, c):
  def norm(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)

  sims = norm(test_x.astype(np.float64)) @ norm(train_x.astype(np.float64)).T
  preds = []
  for row in sims:
    idx = np.argsort(-row, kind="stable")[:k]
    votes = np.zeros(c)
    np.add.at(votes, train_y[idx], np.exp(row[idx] / t))
    preds.append(np.argmax(votes))
  return np.array(preds)


def test_knn_separable_clusters_is_perfect():
  rng = np.random.default_rng(0)
  centres = 10.0 * np.eye(8)[:4]
  train_y = rng.integers(0, 4, 400)
  test_y = rng.integers(0, 4, 100)
  train_x = centres[train_y] + rng.normal(size=(400, 8))
  test_x = centres[test_y] + rng.normal(size=(100, 8))
  acc = knn.knn_accuracy(train_x, train_y, test_x, test_y, num_classes=4, k=200)
  assert acc == 1.0


def test_knn_matches_numpy_weighted_vote(monkeypatch):
  rng = np.random.default_rng(1)
  train_x, test_x = rng.normal(size=(60, 5)), rng.normal(size=(37, 5))
  train_y, test_y = rng.integers(0, 3, 60), rng.integers(0, 3, 37)
  # Several small chunks, the last one padded: the chunking must not change the answer.
  monkeypatch.setattr(knn, "KNN_MAX_SIMILARITIES", 60 * 10)
  for k, t in [(1, 0.1), (7, 0.1), (200, 0.5)]:
    expected = np.mean(_knn_numpy(train_x, train_y, test_x, min(k, 60), t, 3) == test_y)
    got = knn.knn_accuracy(train_x, train_y, test_x, test_y, num_classes=3, k=k, temperature=t)
    assert got == pytest.approx(expected)


def test_linear_probe_matches_numpy_sgd():
  """One restated run: torch-style SGD + momentum, wd on all params, per-step cosine, lr*B/256."""
  rng = np.random.default_rng(2)
  n, d, c, bs, epochs, lr, mom, wd = 40, 5, 3, 16, 3, 0.3, 0.9, 1e-2
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = rng.integers(0, c, n).astype(np.int32)
  probe = linear_probe.train_linear_probe(
    x,
    y,
    num_classes=c,
    epochs=epochs,
    batch_size=bs,
    lr=lr,
    momentum=mom,
    weight_decay=wd,
    standardize=False,
    seed=3,
  )
  key = jax.random.PRNGKey(3)
  init_key, key = jax.random.split(key)
  w = 0.01 * np.asarray(jax.random.normal(init_key, (d, c)), np.float64)
  b = np.zeros(c)
  buf_w, buf_b = np.zeros_like(w), np.zeros_like(b)
  steps = n // bs
  total, t = epochs * steps, 0
  for e in range(epochs):
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, e), n))
    for s in range(steps):
      idx = perm[s * bs : (s + 1) * bs]
      logits = x[idx].astype(np.float64) @ w + b
      p = np.exp(logits - logits.max(1, keepdims=True))
      p /= p.sum(1, keepdims=True)
      p[np.arange(bs), y[idx]] -= 1.0
      gw = x[idx].T.astype(np.float64) @ p / bs + wd * w
      gb = p.sum(0) / bs + wd * b
      buf_w, buf_b = mom * buf_w + gw, mom * buf_b + gb
      rate = lr * bs / 256 * 0.5 * (1 + np.cos(np.pi * t / total))
      w, b, t = w - rate * buf_w, b - rate * buf_b, t + 1
  np.testing.assert_allclose(np.asarray(probe.kernel), w, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(probe.bias), b, rtol=1e-4, atol=1e-6)


def test_linear_probe_reaches_a_known_linear_solution():
  rng = np.random.default_rng(3)
  x, y = _separable_linear_data(rng, 3000, 16, 5, margin=1.0)
  train_x, train_y, test_x, test_y = x[:2000], y[:2000], x[2000:], y[2000:]
  result = linear_probe.linear_probe_accuracy(
    train_x, train_y, test_x, test_y, num_classes=5, epochs=30, batch_size=256
  )
  assert result["top1"] >= 0.98, result
  assert result["top5"] == 1.0
  # The same labels permuted at random are not linearly predictable: the probe must not be
  # scoring itself (chance is 20%).
  shuffled = rng.permutation(train_y)
  chance = linear_probe.linear_probe_accuracy(
    train_x, shuffled, test_x, test_y, num_classes=5, epochs=30, batch_size=256
  )
  assert chance["top1"] < 0.4, chance


def test_select_subset_deterministic_balanced_disjoint():
  rng = np.random.default_rng(4)
  labels = rng.integers(0, 10, 5000)
  held_out = rng.choice(5000, 1000, replace=False)
  a = finetune.select_subset(labels, fraction=0.1, seed=7, exclude=held_out)
  b = finetune.select_subset(labels, fraction=0.1, seed=7, exclude=held_out)
  c = finetune.select_subset(labels, fraction=0.1, seed=8, exclude=held_out)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert len(a) == 500 and len(np.unique(a)) == 500
  assert not set(a.tolist()) & set(held_out.tolist())
  assert np.all(np.bincount(labels[a], minlength=10) == 50)
  uneven = finetune.select_subset(labels, num_examples=503, seed=0, balanced=True)
  counts = np.bincount(labels[uneven], minlength=10)
  assert counts.sum() == 503 and counts.max() - counts.min() == 1
  uniform = finetune.select_subset(labels, fraction=0.02, seed=0, balanced=False)
  assert len(uniform) == 100
  with pytest.raises(ValueError, match="fraction"):
    finetune.select_subset(labels, fraction=1.5)


# ---------------------------------------------------------------------------------------------
# End to end on a tiny pretraining run: the default job's table, every standalone mode, and the
# frozen backbone left untouched by the reference-protocol probe.


def _tiny_cluttered_config():
  from configs import cluttered_digits

  config = cluttered_digits.get_config()
  config.model.width = 0.125  # Stages 8-16-32-64.
  config.model.projector = "64-64"
  config.batch_size = 64
  config.num_train_steps = 2
  config.optim.warmup_epochs = 0.0
  config.log_every_steps = 1
  config.checkpoint_every_steps = 2
  config.image_every_steps = 0
  config.eval_every_steps = 0
  config.online_probe = False
  config.eval.final = True
  config.eval.probe_epochs = 2
  config.eval.bn_recalibration_batches = 2
  config.eval.supervised = True  # Off in the default job; the table's every row is tested here.
  config.eval.supervised_match = "steps"  # 2 steps, as many as pretraining.
  return config


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  from barlow_jax import train

  config = _tiny_cluttered_config()
  workdir = str(tmp_path_factory.mktemp("pretrain"))
  result = train.train_and_evaluate(config, workdir)
  return config, workdir, result


def test_default_job_writes_the_results_table(pretrained):
  import json
  import os

  config, workdir, result = pretrained
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  names = [r["name"] for r in results["rows"]]
  assert names[:5] == [
    "Barlow Twins",
    "random init (initial BN statistics)",
    "random init (BN recalibrated on train images)",
    "raw pixels",
    final_table.STANDARDISED_PIXELS,  # The config's backbone standardises its input.
  ]
  assert names[5].startswith("supervised, same backbone (2 steps")
  assert results["num_train"] == 7185 and results["num_eval"] == 1080
  for row in results["rows"]:
    for key in ("linear_top1", "linear_top5", "knn_top1"):
      assert 0.0 <= row[key] <= 1.0
  assert results["rows"][3]["feature_dim"] == results["rows"][4]["feature_dim"] == 20 * 20 * 3
  assert set(results["targets"]) >= {
    "met",
    "above_every_floor",
    "margin_over_random_init",
    "margin_over_raw_pixels",
    "margin_over_standardised_pixels",
  }
  with open(os.path.join(workdir, "results.md")) as f:
    text = f.read()
  assert "| Barlow Twins |" in text and "Targets: Barlow Twins >= 5 points above every" in text
  assert set(results["targets"]["floors"]) == set(names[1:5])


def test_targets_follow_the_issue_and_name_every_floor():
  def row(name, linear, knn):
    return {"name": name, "linear_top1": linear, "knn_top1": knn}

  rows = [
    row("Barlow Twins", 0.60, 0.40),
    row("random init (initial BN statistics)", 0.25, 0.31),
    row("random init (BN recalibrated on train images)", 0.16, 0.17),
    row("raw pixels", 0.10, 0.22),
    row(final_table.STANDARDISED_PIXELS, 0.10, 0.58),
    row("supervised, same backbone (2 steps, 1 s)", 0.99, 0.99),  # Context, not a floor.
  ]
  t = final_table.table_targets(rows)
  assert t["best_random_init"] == 0.31 and t["best_raw_pixels"] == 0.22
  margins = ("margin_over_random_init", "margin_over_raw_pixels", "margin_over_standardised_pixels")
  np.testing.assert_allclose([t[k] for k in margins], [0.29, 0.38, 0.02])
  # Every floor, each probe against the floor's own: the standardised pixels' kNN (58) beats
  # Barlow Twins' (40), so the targets are not met although the old ones are.
  assert list(t["floors"]) == [r["name"] for r in rows[1:5]]
  np.testing.assert_allclose(
    [[m["linear_margin"], m["knn_margin"]] for m in t["floors"].values()],
    [[0.35, 0.09], [0.44, 0.23], [0.50, 0.18], [0.50, -0.18]],
  )
  assert not t["above_every_floor"] and not t["met"]
  rows[4] = row(final_table.STANDARDISED_PIXELS, 0.10, 0.35)  # kNN margin exactly 5 points.
  t = final_table.table_targets(rows)
  assert t["above_every_floor"] and t["met"]
  rows[1] = row("random init (initial BN statistics)", 0.25, 0.36)  # kNN margin 4 points.
  assert not final_table.table_targets(rows)["above_every_floor"]
  rows[1] = row("random init (initial BN statistics)", 0.46, 0.30)  # Linear margin 14 over best.
  t = final_table.table_targets(rows)
  assert t["above_every_floor"] and not t["met"] and not t["linear_targets_met"]
  assert not final_table.table_targets([row("Barlow Twins", 0.44, 0.9), *rows[1:]])["met"]
  text = final_table.results_markdown(
    {
      "dataset": "d", "num_train": 1, "num_eval": 1, "num_classes": 2, "backbone": "b", "seed": 0,
      "rows": [{**r, "linear_top5": 1.0, "feature_dim": 1} for r in rows], "targets": t,
      "probe": {}, "knn": {"k": 200, "temperature": 0.1, "standardize": True},
    }
  )  # fmt: skip
  targets = next(line for line in text.splitlines() if line.startswith("Targets:"))
  assert ">= 5 points above every floor on linear top-1 and on kNN top-1" in targets
  for r in rows[1:5]:  # Each floor named in the targets line, with its linear / kNN margin.
    assert r["name"] in targets
  assert f"{final_table.STANDARDISED_PIXELS} +50.0 / +5.0" in targets
  assert "(all >= 5: yes)" in targets and "supervised" not in targets
  assert "linear top-1 60.0% (>= 45: yes)" in text and ">= 15 both: no" in text
  assert "All targets met: no" in text and "features standardised" in text
  rows[0] = row("Barlow Twins", 0.44, 0.90)  # Below 45 on linear; 15 points over both floors.
  rows[1] = row("random init (initial BN statistics)", 0.25, 0.20)
  results = {"dataset": "d", "num_train": 1, "num_eval": 1, "num_classes": 2, "backbone": "b"}
  text = final_table.results_markdown(
    {
      **results, "seed": 0, "rows": [{**r, "linear_top5": 1.0, "feature_dim": 1} for r in rows],
      "targets": final_table.table_targets(rows), "probe": {}, "knn": {"k": 1, "temperature": 1},
    }
  )  # fmt: skip
  assert "(>= 45: no)" in text and ">= 15 both: yes" in text and "All targets met: no" in text


def test_knn_standardize_matches_numpy():
  rng = np.random.default_rng(4)
  # Positive features with a large shared mean and one loud nuisance dimension, as ReLU features.
  train_x = np.abs(rng.normal(size=(80, 6))) + 5.0
  test_x = np.abs(rng.normal(size=(31, 6))) + 5.0
  train_x[:, 0] *= 40.0
  test_x[:, 0] *= 40.0
  train_y, test_y = rng.integers(0, 3, 80), rng.integers(0, 3, 31)
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  z_train, z_test = (train_x - mean) / std, (test_x - mean) / std
  for k, t in [(1, 0.1), (9, 0.1), (200, 0.5)]:
    expected = np.mean(_knn_numpy(z_train, train_y, z_test, min(k, 80), t, 3) == test_y)
    got = knn.knn_accuracy(
      train_x, train_y, test_x, test_y, num_classes=3, k=k, temperature=t, standardize=True
    )
    assert got == pytest.approx(expected)
  plain = np.mean(_knn_numpy(train_x, train_y, test_x, 9, 0.1, 3) == test_y)
  assert knn.knn_accuracy(train_x, train_y, test_x, test_y, num_classes=3, k=9) == pytest.approx(
    plain
  )


def test_knn_settings_come_from_the_config():
  from barlow_jax import config as config_lib
  from configs import cluttered_digits

  assert knn.knn_kwargs_from_config(config_lib.base_config())["standardize"] is False
  assert knn.knn_kwargs_from_config(cluttered_digits.get_config()) == {
    "k": int(cluttered_digits.get_config().eval.knn_k),
    "temperature": float(cluttered_digits.get_config().eval.knn_temperature),
    "standardize": True,
  }


def _evaluate_mode(workdir, out, name, cfg):
  import json
  import os

  cfg.eval.backbone = workdir
  cfg.eval.mode = name
  results = evaluate.evaluate(cfg, out)
  with open(os.path.join(out, "results.json")) as f:
    assert json.load(f)["mode"] == name
  assert os.path.exists(os.path.join(out, "results.md"))
  return results


def test_evaluate_from_the_workdir_linear_and_knn(pretrained, tmp_path):
  from configs import eval_linear

  _, workdir, _ = pretrained
  cfg = eval_linear.get_config("cluttered_digits,runlocal")
  results = _evaluate_mode(workdir, str(tmp_path / "linear"), "linear", cfg)
  assert results["protocol"] == "features" and 0.0 <= results["top1"] <= results["top5"] <= 1.0
  cfg = eval_linear.get_config("cluttered_digits")
  results = _evaluate_mode(workdir, str(tmp_path / "knn"), "knn", cfg)
  assert 0.0 <= results["knn_top1"] <= 1.0 and results["num_eval"] == 1080


@pytest.mark.slow
def test_evaluate_from_the_workdir_semisup(pretrained, tmp_path):
  from configs import eval_semisup

  _, workdir, _ = pretrained
  cfg = eval_semisup.get_config("cluttered_digits,runlocal")
  cfg.eval.semisup_fraction = 0.05
  results = _evaluate_mode(workdir, str(tmp_path / "semisup"), "semisup", cfg)
  assert results["num_labelled"] == 359  # 5% of 7185, class-balanced.
  assert 0.0 <= results["top1"] <= results["top5"] <= 1.0


def test_reference_probe_leaves_the_frozen_backbone_bit_identical(pretrained):
  config, workdir, _ = pretrained
  backbone, variables, _ = features.load_backbone(workdir)
  before = jax.tree.map(lambda x: np.array(x, copy=True), variables)
  config = _tiny_cluttered_config()
  config.eval.probe_epochs = 1
  config.num_train_examples = 512
  result = linear_probe.reference_linear_probe(config, backbone, variables, num_classes=10)
  assert 0.0 <= result["top1"] <= result["top5"] <= 1.0
  leaves_before = jax.tree_util.tree_leaves_with_path(before)
  leaves_after = jax.tree_util.tree_leaves_with_path(variables)
  assert len(leaves_before) == len(leaves_after) > 0
  for (path, a), (_, b) in zip(leaves_before, leaves_after):
    assert np.array_equal(a, np.asarray(b)), jax.tree_util.keystr(path)


def test_load_backbone_checkpoint_equals_export(pretrained):
  _, workdir, _ = pretrained
  _, exported, _ = features.load_backbone(workdir)
  _, from_ckpt, _ = features.load_backbone(workdir, checkpoint_step=2)
  for a, b in zip(jax.tree.leaves(exported), jax.tree.leaves(from_ckpt)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match="checkpoint_step"):
    features.load_backbone(workdir, checkpoint_step=7)


def test_random_crop_flip_identity_mirror_and_crop():
  rng = np.random.default_rng(5)
  images = rng.normal(size=(4, 12, 12, 3)).astype(np.float32)
  key = jax.random.PRNGKey(0)
  same = finetune.random_crop_flip(key, images, area=(1.0, 1.0), aspect=(1.0, 1.0), flip_prob=0.0)
  np.testing.assert_allclose(np.asarray(same), images, atol=1e-5)
  mirrored = finetune.random_crop_flip(
    key, images, area=(1.0, 1.0), aspect=(1.0, 1.0), flip_prob=1.0
  )
  np.testing.assert_allclose(np.asarray(mirrored), images[:, :, ::-1], atol=1e-5)
  # A quarter-area square crop is a 2x bilinear zoom into one 6x6 window of the image: a
  # constant image stays constant, and the output is not the input.
  zoom = finetune.random_crop_flip(key, images, area=(0.25, 0.25), aspect=(1.0, 1.0), flip_prob=0)
  assert zoom.shape == images.shape and not np.allclose(np.asarray(zoom), images, atol=1e-2)
  flat = finetune.random_crop_flip(key, np.ones_like(images), area=(0.25, 0.25), aspect=(1, 1))
  np.testing.assert_allclose(np.asarray(flat), 1.0, atol=1e-5)


@pytest.mark.parametrize("key, value", [("eval_resize", 200), ("eval_interpolation", "lanczos")])
def test_bad_eval_preprocessing_fails_before_the_backbone_loads(tmp_path, key, value):
  from configs import eval_linear

  config = eval_linear.get_config()
  config.eval.backbone = str(tmp_path / "not_there")  # Would be the error without the check.
  config.dataset.image_size = 224
  config.dataset[key] = value
  with pytest.raises(ValueError, match=f"config.dataset.{key}={value!r}"):
    evaluate.evaluate(config, str(tmp_path))

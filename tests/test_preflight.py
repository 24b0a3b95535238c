"""barlow_jax.preflight: every split a run or an evaluation reads later is checked first.

Every split a run reads later (the kNN monitor's, the final table's, an evaluation's, the reference
probe's batches) is checked before the first step or the first backbone load; a refused
invocation writes nothing. The resume check and the config record are in test_train_setup.py, the
command lines' one-line errors in test_cli.py.
"""

import os

import configs_tiny
import numpy as np
import pytest
from PIL import Image

from barlow_jax import checkpointing, evaluate, train_setup
from barlow_jax.config_validation import UserError
from barlow_jax.evaluation import modes, transfer


def folder_dataset(root, splits=("train",), per_class=24, size=20):
  """Two classes of random `size` px PNGs in each split under `root` (test_cli.py uses it too)."""
  rng = np.random.default_rng(0)
  for split in splits:
    for c in ("a", "b"):
      os.makedirs(root / split / c, exist_ok=True)
      for i in range(per_class):
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / split / c / f"{i}.png")
  return str(root)


def _folder_config(folder):
  config = configs_tiny.get_config()
  config.dataset.name = "folder"
  config.dataset.folder = folder
  config.dataset.eval_split = "test"
  config.dataset.probe_split = "train"
  config.dataset.eval_resize = 16
  return config


# ---------------------------------------------------------------------------------------------
# Splits read later, checked first.


@pytest.mark.parametrize(
  "change, key, reader",
  [
    ({"eval_every_steps": 5}, "eval_split", "kNN monitor"),
    ({"eval.final": True}, "eval_split", "final evaluation"),
  ],
)
def test_a_split_read_later_is_checked_before_anything_is_written(
  devices, tmp_path, change, key, reader
):
  config = _folder_config(folder_dataset(tmp_path / "data"))
  for dotted, value in change.items():
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  workdir = tmp_path / "run"
  with pytest.raises(UserError, match=rf"config\.dataset\.{key}='test'.*{reader}") as e:
    train_setup.prepare(config, str(workdir))
  assert "config.eval_every_steps=0" in str(e.value) or "config.eval.final=False" in str(e.value)
  assert not workdir.exists()  # Nothing written: no config record, no checkpoints/.


def test_an_empty_or_unlabelled_split_for_the_final_table_is_refused(devices, tmp_path):
  config = configs_tiny.get_config()
  config.eval.final = True
  config.dataset.eval_split = ""
  with pytest.raises(UserError, match=r"config\.dataset\.eval_split is empty.*final evaluation"):
    train_setup.prepare(config, str(tmp_path / "run"))
  unlabelled = tmp_path / "flat"
  os.makedirs(unlabelled / "train")
  os.makedirs(unlabelled / "test")
  for split in ("train", "test"):
    for i in range(20):
      Image.fromarray(np.full((20, 20, 3), i, np.uint8)).save(unlabelled / split / f"{i}.png")
  config = _folder_config(str(unlabelled))
  config.eval.final = True
  config.online_probe = False
  with pytest.raises(UserError, match=r"config\.dataset\.probe_split='train' has no labels"):
    train_setup.prepare(config, str(tmp_path / "run"))


def test_num_train_examples_past_the_split_says_minus_one_means_all(devices, tmp_path):
  config = configs_tiny.get_config()
  config.num_train_examples = 5000
  with pytest.raises(UserError, match=r"config\.num_train_examples=5000 exceeds the 1437 .*-1"):
    train_setup.prepare(config, str(tmp_path / "run"))


def fake_backbone(tmp_path):
  """A backbone directory whose only file is an empty model config (never loaded)."""
  directory = tmp_path / "backbone"
  os.makedirs(directory)
  (directory / checkpointing.MODEL_CONFIG_FILE).write_text("{}")
  return str(directory)


def no_backbone_load(monkeypatch):
  """Makes loading a backbone fail the test: the checks must come first."""

  def refuse(*args, **kwargs):
    raise AssertionError("the backbone was loaded before the splits were checked")

  monkeypatch.setattr(modes, "load_backbone", refuse)
  monkeypatch.setattr(transfer, "load_backbone", refuse)


@pytest.mark.parametrize("mode", ["linear", "knn", "semisup", "transfer"])
def test_evaluate_checks_its_splits_before_loading_the_backbone(tmp_path, monkeypatch, mode):
  no_backbone_load(monkeypatch)
  config = _folder_config(folder_dataset(tmp_path / "data"))
  config.eval.mode = mode
  config.eval.backbone = fake_backbone(tmp_path)
  config.dataset.eval_split = "validation"
  match = rf"config\.dataset\.eval_split='validation'.*the {mode} evaluation"
  with pytest.raises(UserError, match=match):
    evaluate.evaluate(config, str(tmp_path / "eval"))


def test_the_reference_probe_batch_names_its_own_key(tmp_path, monkeypatch):
  no_backbone_load(monkeypatch)
  config = _folder_config(folder_dataset(tmp_path / "data", splits=("train", "test")))
  config.eval.mode = "linear"
  config.eval.probe_protocol = "reference"
  config.eval.probe_batch_size = 256
  config.eval.backbone = fake_backbone(tmp_path)
  with pytest.raises(UserError, match=r"^config\.eval\.probe_batch_size=256 is larger than the 48"):
    evaluate.evaluate(config, str(tmp_path / "eval"))

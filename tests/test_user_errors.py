"""A user's mistake is refused before the work, naming the key or path and the fix.

- Every split a run reads later (the kNN monitor's, the final table's, an evaluation's, the
  reference probe's batches) is checked before the first step or the first backbone load
  (`barlow_jax.preflight`); a refused invocation writes nothing, and the workdir's config record
  is the invocation's that wrote the first checkpoint.
- A checkpoint is not resumed with another model or batch (checked against the record, before
  anything compiles); a late failure keeps the checkpoint and the backbone export.
- The command lines print a `UserError` as one line (with where a named key got its value) and
  exit 1 without a traceback; `convert` and `evaluate` check their paths first.
"""

import json
import os
import subprocess
import sys

import configs_tiny
import numpy as np
import pytest
from PIL import Image

from barlow_jax import (
  checkpointing,
  cli,
  convert,
  evaluate,
  train,
  train_setup,
)
from barlow_jax.config_validation import UserError
from barlow_jax.evaluation import knn, modes, transfer

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _folder(root, splits=("train",), per_class=24, size=20):
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
  config = _folder_config(_folder(tmp_path / "data"))
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


def _fake_backbone(tmp_path):
  directory = tmp_path / "backbone"
  os.makedirs(directory)
  (directory / checkpointing.MODEL_CONFIG_FILE).write_text("{}")
  return str(directory)


def _no_backbone_load(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("the backbone was loaded before the splits were checked")

  monkeypatch.setattr(modes, "load_backbone", refuse)
  monkeypatch.setattr(transfer, "load_backbone", refuse)


@pytest.mark.parametrize("mode", ["linear", "knn", "semisup", "transfer"])
def test_evaluate_checks_its_splits_before_loading_the_backbone(tmp_path, monkeypatch, mode):
  _no_backbone_load(monkeypatch)
  config = _folder_config(_folder(tmp_path / "data"))
  config.eval.mode = mode
  config.eval.backbone = _fake_backbone(tmp_path)
  config.dataset.eval_split = "validation"
  match = rf"config\.dataset\.eval_split='validation'.*the {mode} evaluation"
  with pytest.raises(UserError, match=match):
    evaluate.evaluate(config, str(tmp_path / "eval"))


def test_the_reference_probe_batch_names_its_own_key(tmp_path, monkeypatch):
  _no_backbone_load(monkeypatch)
  config = _folder_config(_folder(tmp_path / "data", splits=("train", "test")))
  config.eval.mode = "linear"
  config.eval.probe_protocol = "reference"
  config.eval.probe_batch_size = 256
  config.eval.backbone = _fake_backbone(tmp_path)
  with pytest.raises(UserError, match=r"^config\.eval\.probe_batch_size=256 is larger than the 48"):
    evaluate.evaluate(config, str(tmp_path / "eval"))


# ---------------------------------------------------------------------------------------------
# The config record, resume, a late failure.


@pytest.fixture(scope="module")
def late_failure(tmp_path_factory):
  """A 2-step tiny run whose last kNN monitor fails; its workdir held a stale config.json."""
  workdir = tmp_path_factory.mktemp("late") / "run"
  config = configs_tiny.get_config()
  config.num_train_steps = 2
  config.checkpoint_every_steps = 1
  config.log_every_steps = 1
  config.eval_every_steps = 1
  os.makedirs(workdir)
  # Left by an invocation that never saved a checkpoint.
  (workdir / checkpointing.CONFIG_JSON).write_text(json.dumps({"model": {"backbone": "ResNet50"}}))
  calls = []

  def accuracy(state, config, mesh):
    calls.append(int(state.step))
    if len(calls) == 2:
      raise RuntimeError("the last kNN monitor failed")
    return 0.5

  saved, knn.monitor_accuracy = knn.monitor_accuracy, accuracy
  try:
    with pytest.raises(RuntimeError, match="the last kNN monitor failed"):
      train.train_and_evaluate(config, str(workdir))
  finally:
    knn.monitor_accuracy = saved
  return config, workdir, calls


def test_a_late_failure_keeps_the_checkpoint_and_the_export(devices, late_failure):
  _, workdir, calls = late_failure
  assert calls == [1, 2]
  assert checkpointing.latest_step(workdir) == 2
  assert checkpointing.is_backbone_dir(workdir / checkpointing.BACKBONE)


def test_the_record_is_the_invocation_that_wrote_the_first_checkpoint(devices, late_failure):
  config, workdir, _ = late_failure
  record = checkpointing.read_json(workdir / checkpointing.CONFIG_JSON)
  assert record == json.loads(config.to_json_best_effort())
  assert "ResNet18" in (workdir / checkpointing.CONFIG_TEXT).read_text()


@pytest.mark.parametrize(
  "key, value, message",
  [
    (
      "model.projector",
      "64-64-64",
      r"the checkpoint in \S+ was written by a run with model\.projector=32-32-32; this invocation "
      r"asks for 64-64-64 .*use a new workdir or the run's settings",
    ),
    ("model.width", 0.25, r"model\.width=0\.125; this invocation asks for 0\.25"),
    ("batch_size", 32, r"batch_size=16; this invocation asks for 32 .*--config\.batch_size=16"),
  ],
)
def test_resuming_with_another_model_or_batch_is_refused_before_the_restore(
  devices, late_failure, key, value, message
):
  config, workdir, _ = late_failure
  changed = configs_tiny.get_config()
  changed.update_from_flattened_dict({key: value, "num_train_steps": 2})
  with pytest.raises(UserError, match=message):
    train_setup.check_resume(changed, str(workdir))
  train_setup.check_resume(config, str(workdir))  # The run's own settings resume.


def test_a_workdir_without_checkpoints_has_no_record_to_compare(tmp_path):
  (tmp_path / checkpointing.CONFIG_JSON).write_text(json.dumps({"batch_size": 999}))
  assert checkpointing.recorded_config(tmp_path) is None
  train_setup.check_resume(configs_tiny.get_config(), str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Command lines: one line, exit 1, no traceback; paths first.


def _fails(capsys, command, argv):
  with pytest.raises(SystemExit) as e:
    command(["prog", *argv])
  err = capsys.readouterr().err
  assert e.value.code == 1, err
  assert "Traceback" not in err
  return err


def test_evaluate_refuses_a_file_as_workdir_before_the_evaluation(tmp_path, capsys, monkeypatch):
  _no_backbone_load(monkeypatch)
  target = tmp_path / "results.txt"
  target.write_text("x")
  err = _fails(
    capsys,
    evaluate.COMMAND,
    [
      "--config=configs/eval_linear.py:digits",
      f"--config.eval.backbone={_fake_backbone(tmp_path)}",
      f"--workdir={target}",
    ],
  )
  assert f"--workdir={target} is a file" in err
  assert err.startswith("python -m barlow_jax.evaluate: error: ")


def test_evaluate_names_a_missing_backbone(tmp_path, capsys):
  err = _fails(
    capsys,
    evaluate.COMMAND,
    [
      "--config=configs/eval_linear.py:digits",
      f"--config.eval.backbone={tmp_path / 'nothing'}",
      f"--workdir={tmp_path / 'eval'}",
    ],
  )
  assert "config.eval.backbone=" in err and "is missing" in err


def test_convert_checks_its_paths_first(tmp_path, capsys):
  missing = tmp_path / "missing.pth"
  err = _fails(capsys, convert.COMMAND, [f"--from={missing}", f"--to={tmp_path / 'out'}"])
  assert f"--from={missing} does not exist" in err
  junk = tmp_path / "junk.pth"
  junk.write_bytes(b"not a torch file at all")
  err = _fails(capsys, convert.COMMAND, [f"--from={junk}", f"--to={tmp_path / 'out'}"])
  assert f"--from={junk} is not a PyTorch file" in err
  assert not (tmp_path / "out").exists()
  workdir = tmp_path / "run"
  os.makedirs(workdir)
  backbone = _fake_backbone(workdir)
  err = _fails(capsys, convert.COMMAND, ["--export", f"--from={workdir}", f"--to={tmp_path}/a.pth"])
  assert f"Did you mean {backbone}" in err
  err = _fails(capsys, convert.COMMAND, ["--export", f"--from={backbone}", f"--to={tmp_path}"])
  assert f"--to={tmp_path} is a directory" in err and "resnet50.pth" in err


def test_the_origin_of_a_key_is_named():
  argv = ["prog", "--config=configs/imagenet_resnet50.py:runlocal", "--workdir=w"]
  origin = cli.config_origin("num_train_examples", argv)
  assert origin == "set by the variant ':runlocal' of configs/imagenet_resnet50.py"
  assert cli.config_origin("num_train_examples", [*argv, "--config.num_train_examples=9"]) == (
    "set on the command line (--config.num_train_examples=...)"
  )
  assert cli.config_origin("batch_size", ["prog", "--config=tests/configs_tiny.py"]) == (
    "set by tests/configs_tiny.py"
  )
  text = cli.user_error_text("p", UserError("config.num_train_examples=1024 exceeds"), argv)
  assert text.startswith("p: error: config.num_train_examples=1024 exceeds [config.")
  assert "variant ':runlocal'" in text


def test_main_prints_the_split_error_alone_and_writes_nothing(tmp_path):
  folder = _folder(tmp_path / "data")
  workdir = tmp_path / "run"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "barlow_jax.main",
      "--config=configs/cluttered_digits.py",
      "--config.dataset.name=folder",
      f"--config.dataset.folder={folder}",
      "--config.batch_size=16",
      f"--workdir={workdir}",
    ],
    cwd=_ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  line = [x for x in result.stderr.splitlines() if x.startswith("python -m barlow_jax.main: error")]
  assert len(line) == 1, result.stderr[-3000:]
  assert "config.dataset.eval_split='test'" in line[0] and "config.eval_every_steps=0" in line[0]
  assert "set by configs/cluttered_digits.py" in line[0]
  assert not workdir.exists()


@pytest.mark.parametrize(
  "config_arg, expected",
  [
    # A missing file: ml_collections reports it on first use, with a traceback of its own.
    ("configs/no_such_config.py", "No such file or directory: 'configs/no_such_config.py'"),
    # A misspelt variant: the config file's ValueError, without the traceback around it.
    ("configs/cifar10_resnet18.py:run_local", "unknown argument 'run_local'; use 'runlocal'."),
  ],
)
def test_a_config_file_that_does_not_load_is_one_line_without_a_traceback(
  tmp_path, config_arg, expected
):
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "barlow_jax.main",
      f"--config={config_arg}",
      f"--workdir={tmp_path / 'run'}",
    ],
    cwd=_ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert expected in result.stderr
  assert not (tmp_path / "run").exists()

"""barlow_jax.train_setup's resume check and the run's config record.

A checkpoint is not resumed with another model or batch (checked against the record, before
anything compiles); a late failure keeps the checkpoint and the backbone export; the workdir's
config record is the invocation's that wrote the first checkpoint.
"""

import json
import os

import configs_tiny
import pytest

from barlow_jax import checkpointing, train, train_setup
from barlow_jax.config_validation import UserError
from barlow_jax.evaluation import knn


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

"""metrics.jsonl: what `JsonlWriter` writes is what `read_metrics` reads, cut lines and resumes."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from clu import metric_writers

from barlow_jax import checkpointing, metrics_file


def test_written_scalars_read_back_by_step(tmp_path):
  writer = metric_writers.MultiWriter([metrics_file.JsonlWriter(tmp_path)])
  writer.write_hparams({"lr": 0.1})
  writer.write_scalars(5, {"loss": np.float32(2.5), "lr_weights": 0.125})
  writer.write_images(5, {"heatmap": np.zeros((1, 4, 4, 3))})
  writer.write_scalars(5, {"knn_accuracy": jnp.asarray(0.75)})
  writer.write_scalars(10, {"loss": 1.5, "epoch": np.asarray(2.0)})
  writer.close()

  lines = (tmp_path / metrics_file.FILENAME).read_text().splitlines()
  assert [json.loads(line) for line in lines] == [
    {"step": 5, "loss": 2.5, "lr_weights": 0.125},
    {"step": 5, "knn_accuracy": 0.75},
    {"step": 10, "loss": 1.5, "epoch": 2.0},
  ]
  assert metrics_file.read_metrics(tmp_path) == {
    5: {"loss": 2.5, "lr_weights": 0.125, "knn_accuracy": 0.75},
    10: {"loss": 1.5, "epoch": 2.0},
  }


def test_each_line_is_on_disk_before_close(tmp_path):
  writer = metrics_file.JsonlWriter(tmp_path)
  writer.write_scalars(1, {"loss": 3.0})
  assert metrics_file.read_metrics(tmp_path) == {1: {"loss": 3.0}}
  writer.close()


def test_a_line_cut_by_a_kill_is_skipped_and_the_resumed_run_appends_after_it(tmp_path):
  path = tmp_path / metrics_file.FILENAME
  path.write_text('{"step": 5, "loss": 2.0}\n{"step": 10, "lo')
  assert metrics_file.read_metrics(tmp_path) == {5: {"loss": 2.0}}

  writer = metrics_file.JsonlWriter(tmp_path)
  writer.write_scalars(10, {"loss": 1.0})
  writer.close()
  assert metrics_file.read_metrics(tmp_path) == {5: {"loss": 2.0}, 10: {"loss": 1.0}}


def test_a_step_logged_again_after_a_resume_takes_the_later_values(tmp_path):
  first = metrics_file.JsonlWriter(tmp_path)
  first.write_scalars(5, {"loss": 2.0, "images_per_second": 100.0})
  first.write_scalars(10, {"loss": 1.0, "images_per_second": 110.0})
  first.close()
  resumed = metrics_file.JsonlWriter(tmp_path)  # Resumed from the checkpoint of step 5.
  resumed.write_scalars(10, {"loss": 1.0, "images_per_second": 90.0})
  resumed.write_scalars(15, {"loss": 0.5})
  resumed.close()

  assert metrics_file.read_metrics(tmp_path) == {
    5: {"loss": 2.0, "images_per_second": 100.0},
    10: {"loss": 1.0, "images_per_second": 90.0},
    15: {"loss": 0.5},
  }


def test_no_file_reads_as_no_metrics(tmp_path):
  assert metrics_file.read_metrics(tmp_path) == {}


def _run(tmp_path, steps, *, purge_step=None, object_store=None):
  writer = metrics_file.JsonlWriter(tmp_path, purge_step=purge_step, object_store=object_store)
  for step in steps:
    writer.write_scalars(step, {"loss": float(step)})
  writer.close()


@pytest.mark.parametrize("object_store", [False, True])
def test_a_resume_drops_the_abandoned_invocations_later_steps(tmp_path, object_store):
  """Issue 27, item 6: logged at 5, 10, 15, 20, killed, resumed from the step-12 checkpoint and run
  to 14: the run's metrics are 5, 10, 14 (TensorBoard's purge_step)."""
  _run(tmp_path, [5, 10, 15, 20], object_store=object_store)
  _run(tmp_path, [14], purge_step=12, object_store=object_store)
  assert metrics_file.read_metrics(tmp_path) == {
    5: {"loss": 5.0},
    10: {"loss": 10.0},
    14: {"loss": 14.0},
  }
  # A later resume from 14 keeps everything up to 14.
  _run(tmp_path, [15], purge_step=14, object_store=object_store)
  assert sorted(metrics_file.read_metrics(tmp_path)) == [5, 10, 14, 15]


@pytest.mark.parametrize("object_store", [False, True])
def test_a_resume_before_logging_anything_still_drops_the_later_steps(tmp_path, object_store):
  # The mark goes with the first write: an invocation that logs nothing changes nothing, and
  # the next one that does log marks its own start step.
  _run(tmp_path, [5, 10, 15], object_store=object_store)
  _run(tmp_path, [], purge_step=8, object_store=object_store)
  assert sorted(metrics_file.read_metrics(tmp_path)) == [5, 10, 15]
  _run(tmp_path, [9], purge_step=8, object_store=object_store)
  assert sorted(metrics_file.read_metrics(tmp_path)) == [5, 9]


def _count_uploads(monkeypatch, tmp_path):
  """Bytes written through `epath.Path.write_text` (the object-store branch's only write)."""
  written = []
  path_type = type(metrics_file.checkpointing.path(tmp_path))
  original = path_type.write_text

  def counting(self, data, *args, **kwargs):
    written.append(len(data.encode()))
    return original(self, data, *args, **kwargs)

  monkeypatch.setattr(path_type, "write_text", counting)
  return written


def test_object_store_writes_upload_bounded_bytes_and_read_back_in_order(tmp_path, monkeypatch):
  """Issue 27, item 7: on gs:// (forced here on a local path) each write uploads at most
  LINES_PER_OBJECT lines, not the whole file: 1000 writes upload a bounded multiple of the data."""
  written = _count_uploads(monkeypatch, tmp_path)
  n = 1000
  writer = metrics_file.JsonlWriter(tmp_path, object_store=True)
  for step in range(1, n + 1):
    writer.write_scalars(step, {"loss": 1.0 / step, "lr_weights": 0.2})
  writer.close()
  assert not hasattr(writer, "_file") or writer._file is None  # Never opened for append.
  lines = [
    line
    for part in [tmp_path / metrics_file.FILENAME]
    + [tmp_path / f"{metrics_file.FILENAME}.{i}" for i in range(1, 20)]
    for line in part.read_text().splitlines()
  ]
  total = sum(len(line) + 1 for line in lines)
  assert len(written) == n
  line_bytes = max(len(line) + 1 for line in lines)
  assert max(written) <= metrics_file.LINES_PER_OBJECT * line_bytes
  # Rewriting one object each time would upload ~n/2 times the file (500x here).
  assert sum(written) <= (metrics_file.LINES_PER_OBJECT / 2 + 1) * total
  assert sum(written) < 0.1 * (n / 2) * total
  logged = metrics_file.read_metrics(tmp_path)
  assert sorted(logged) == list(range(1, n + 1))
  assert logged[n]["loss"] == pytest.approx(1.0 / n)
  # Numeric, not lexical, order of the parts: part 10 after part 9.
  assert (tmp_path / f"{metrics_file.FILENAME}.10").exists()
  (tmp_path / f"{metrics_file.FILENAME}.10").write_text('{"step": 505, "loss": -1.0}\n')
  (tmp_path / f"{metrics_file.FILENAME}.9").write_text('{"step": 505, "loss": -9.0}\n')
  assert metrics_file.read_metrics(tmp_path)[505]["loss"] == -1.0


@pytest.mark.parametrize("object_store", [False, True])
def test_both_branches_read_back_what_two_invocations_wrote(tmp_path, object_store):
  # The gs:// branch exercised on a local path (the bucket test, tests/test_gcs.py, is slow).
  _run(tmp_path, [5, 10], object_store=object_store)
  _run(tmp_path, [15, 20], purge_step=10, object_store=object_store)
  assert metrics_file.read_metrics(tmp_path) == {s: {"loss": float(s)} for s in (5, 10, 15, 20)}
  names = sorted(p.name for p in tmp_path.iterdir())
  expected = [metrics_file.FILENAME] + ([f"{metrics_file.FILENAME}.1"] if object_store else [])
  assert names == expected


# The pretraining clock: pretraining.json.


def test_only_process_0_writes_pretraining_json(monkeypatch, tmp_path):
  path = tmp_path / checkpointing.PRETRAINING_JSON
  monkeypatch.setattr(metrics_file.jax, "process_index", lambda: 1)
  clock = metrics_file.PretrainingClock(str(tmp_path), 0)
  clock.saved(2, 1.5, total_steps=4)
  clock.saved(4, 3.0, total_steps=4, finished=True)
  assert not path.exists()
  monkeypatch.setattr(metrics_file.jax, "process_index", lambda: 0)
  clock.saved(4, 3.0, total_steps=4, finished=True)
  assert json.loads(path.read_text())["step"] == 4
  # Process 1 leaves process 0's record alone too (an extension's saves included).
  before = path.read_bytes()
  monkeypatch.setattr(metrics_file.jax, "process_index", lambda: 1)
  extension = metrics_file.PretrainingClock(str(tmp_path), 4)
  extension.saved(8, 2.0, total_steps=8, finished=True)
  assert path.read_bytes() == before


def test_the_pretraining_record_follows_an_extension_and_ignores_a_plain_rerun(tmp_path):
  path = tmp_path / checkpointing.PRETRAINING_JSON
  clock = metrics_file.PretrainingClock(str(tmp_path), 0)
  clock.saved(4, 10.0, total_steps=4, finished=True)
  before = path.read_bytes()
  rerun = metrics_file.PretrainingClock(str(tmp_path), 4)  # The same command again: trains nothing.
  rerun.saved(4, 0.5, total_steps=4, finished=True)
  assert path.read_bytes() == before
  extension = metrics_file.PretrainingClock(str(tmp_path), 4)  # --config.num_train_steps=8
  extension.saved(6, 4.0, total_steps=8)
  extension.saved(8, 8.0, total_steps=8, finished=True)
  record = json.loads(path.read_text())
  assert record["step"] == 8 and record["total_steps"] == 8 and record["finished"]
  assert record["seconds"] == 18.0 and record["seconds_at_step"] == {
    "4": 10.0,
    "6": 14.0,
    "8": 18.0,
  }

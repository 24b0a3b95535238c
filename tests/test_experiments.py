"""experiments/: studies -> validated configs -> command lines -> (fake) runs -> tables and plots.

Nothing here trains: a stand-in for `python -m barlow_jax.main` writes the files a run leaves.
"""

import json
import os
import shlex
import stat
import sys

import pytest

from experiments import plots, run, studies

_FAKE_MAIN = r"""#!{python}
# Stands in for `python -m barlow_jax.main`: writes what a finished run leaves in its workdir.
import json, os, sys
args = dict(a.split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
workdir = args["--workdir"]
lambd = float(args.get("--config.loss.lambd", 0.0051))
if args.get("--config.loss.variant") == "redundancy_only":
    print("NonFiniteLossError: Non-finite training loss at step 7 (loss=nan, grad_norm=nan)")
    sys.exit(1)
with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:  # barlow_jax.metrics_file's lines.
    f.write(json.dumps({{"step": 10, "loss": 200.0, "corr_diag_mean": 0.5}}) + "\n")
    f.write(json.dumps({{"step": 20, "loss": 123.5, "corr_diag_mean": 0.75}}) + "\n")
    f.write(json.dumps({{"step": 20, "representation_rank": 9.5}}) + "\n")
acc = 0.5 + lambd
rows = [{{"name": "Barlow Twins", "linear_top1": acc, "linear_top5": 0.9, "knn_top1": acc - 0.1,
          "feature_dim": 128}}]
with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({{"rows": rows, "num_train": 7185, "pretrain_seconds": 1.0}}, f)
"""


def _fake_python(tmp_path) -> str:
  path = tmp_path / "fake_python"
  path.write_text(_FAKE_MAIN.format(python=sys.executable))
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return str(path)


def _base():
  return run.load_config("configs/cluttered_digits.py")


def test_overrides_set_nested_keys_and_leave_the_base_alone():
  base = _base()
  out = run.apply_overrides(
    base,
    {"loss.lambd": 0.02, "model.projector": "64-64-64", "augment.view_a.crop_area": [1.0, 1.0]},
  )
  assert out.loss.lambd == 0.02 and out.model.projector == "64-64-64"
  assert out.augment.view_a.crop_area == (1.0, 1.0)  # A list becomes the field's tuple.
  assert base.loss.lambd == 0.0051 and base.model.projector == "512-512-512"
  with pytest.raises(AttributeError):
    out.loss.lambda_ = 1.0  # Locked, as barlow_jax.main locks it.


@pytest.mark.parametrize(
  "key, named",
  [
    ("loss.lambda", "loss.lambda"),
    ("model.stop_gradient_bee", "model.stop_gradient_bee"),
    ("nosuchgroup.x", "nosuchgroup"),
    ("loss.lambd.x", "loss.lambd.x"),
  ],
)
def test_an_unknown_override_key_is_an_error_naming_it(key, named):
  with pytest.raises(ValueError, match="where/run") as e:
    run.apply_overrides(_base(), {key: 1.0}, where="where/run")
  assert repr(named) in str(e.value)


def test_a_wrong_override_type_is_an_error():
  with pytest.raises(ValueError, match="loss.lambd"):
    run.apply_overrides(_base(), {"loss.lambd": "big"})
  with pytest.raises(ValueError, match="names a group"):
    run.apply_overrides(_base(), {"loss": 1.0})


@pytest.mark.parametrize("scale", sorted(studies.SCALES))
@pytest.mark.parametrize("study", sorted(studies.STUDIES))
def test_every_study_plans_at_every_scale(study, scale):
  try:
    planned = run.plan(study, scale, workdir_root="/tmp/root")
  except ValueError as e:
    # The asymmetry study needs model keys that may not exist yet: the error must name them.
    assert study == "asymmetry", e
    assert "model.stop_gradient_b" in str(e) or "model.predictor" in str(e)
    return
  names = [p.run.name for p in planned]
  assert len(names) == len(set(names)) >= 1
  for p in planned:
    assert p.workdir == os.path.join("/tmp/root", study, p.run.name)
    for key, value in p.overrides.items():
      node = p.config
      for part in key.split("."):
        node = node[part]
      assert node == (tuple(value) if isinstance(value, list) else value), key
  if study == "projector_width":
    assert [p.run.x for p in planned] == list(studies.SCALES[scale].widths)


def test_unknown_study_scale_and_only_names_are_errors():
  with pytest.raises(ValueError, match="nosuch"):
    run.plan("nosuch", "local")
  with pytest.raises(ValueError, match="--scale"):
    run.plan("lambda", "tpu")
  with pytest.raises(ValueError, match="lambda_9"):
    run.plan("lambda", "local", only=["lambda_9"])


def _parse_with_config_flags(argv):
  """The config `barlow_jax.main` would build from this command line (its own flag parser)."""
  from absl import flags
  from ml_collections import config_flags

  fv = flags.FlagValues()
  argv = ["main", *argv]
  config_flags.DEFINE_config_file(
    "config", None, "", flag_values=fv, lock_config=True, sys_argv=argv
  )
  flags.DEFINE_string("workdir", None, "", flag_values=fv)
  fv(argv)
  return fv.config, fv.workdir


@pytest.mark.parametrize("study", ["loss_ablation", "augmentation_removal", "projector_width"])
def test_dry_run_prints_command_lines_that_main_parses_to_the_same_config(
  study, tmp_path, capsys, monkeypatch
):
  monkeypatch.chdir(run.REPO_ROOT)  # Config paths in the commands are relative to the repo.
  root = str(tmp_path / "root")
  assert run.main([study, "--scale=local", f"--workdir_root={root}", "--dry_run"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  planned = run.plan(study, "local", workdir_root=root)
  assert len(lines) == len(planned)
  for line, p in zip(lines, planned):
    argv = shlex.split(line)
    assert argv[:3] == ["python", "-m", "barlow_jax.main"]
    assert argv[3] == f"--config={studies.SCALES['local'].config}"
    config, workdir = _parse_with_config_flags(argv[3:])
    assert workdir == os.path.join(root, study, p.run.name)
    assert config.to_dict() == p.config.to_dict(), p.run.name
  assert not os.path.exists(root)  # A dry run creates nothing.


def test_default_workdirs_and_results_are_per_scale(capsys, monkeypatch):
  # A finished run of one scale must never be skipped-as-done for another: separate trees.
  monkeypatch.chdir(run.REPO_ROOT)
  for scale in ("local", "digits"):
    assert run.main(["lambda", f"--scale={scale}", "--dry_run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    workdirs = {_parse_with_config_flags(shlex.split(line)[3:])[1] for line in lines}
    expected = os.path.join(run.REPO_ROOT, "workdirs", "experiments", scale, "lambda")
    assert all(w.startswith(expected + os.sep) for w in workdirs), workdirs
  assert run.default_results_dir("local") == run.DEFAULT_RESULTS_DIR
  assert run.default_results_dir("digits") == os.path.join(run.DEFAULT_RESULTS_DIR, "digits")


def test_an_unknown_key_in_a_study_fails_before_anything_runs(tmp_path, capsys, monkeypatch):
  monkeypatch.setitem(
    studies.STUDIES, "bad", lambda scale: [studies.Run("typo", {"optim.lr_weight": 0.1})]
  )
  root = tmp_path / "root"
  assert run.main(["bad", f"--workdir_root={root}"]) == 2
  assert "'optim.lr_weight'" in capsys.readouterr().err
  assert not root.exists()


def test_format_value_round_trips_through_config_flags_types():
  assert run.format_value(True) == "true"
  assert run.format_value(0.002) == "0.002"
  assert run.format_value((1.0, 1.0)) == "(1.0, 1.0)"
  assert run.format_value("64-64-64") == "64-64-64"


def test_run_skip_reuse_collect_and_report_on_a_fake_tree(tmp_path, capsys):
  python = _fake_python(tmp_path)
  root = str(tmp_path / "root")
  out = run.run_study(
    "loss_ablation",
    "local",
    workdir_root=root,
    only=["baseline", "redundancy_only"],
    python=python,
  )
  assert [(o["name"], o["status"]) for o in out] == [
    ("baseline", "done"),
    ("redundancy_only", "failed"),
  ]
  base_dir = os.path.join(root, "loss_ablation", "baseline")
  info = json.load(open(os.path.join(base_dir, run.EXPERIMENT_FILE)))
  assert info["command"].split()[1:3] == ["-m", "barlow_jax.main"]
  # Again: the finished run is skipped, the failed one retried.
  again = run.run_study(
    "loss_ablation",
    "local",
    workdir_root=root,
    only=["baseline", "redundancy_only"],
    python=python,
  )
  assert [o["status"] for o in again] == ["skipped", "failed"]
  # lambda_0.0051 is the baseline's config: reused, not retrained.
  lam = run.run_study(
    "lambda", "local", workdir_root=root, only=["lambda_0.0051", "lambda_0.02"], python=python
  )
  assert [o["status"] for o in lam] == ["reused", "done"]
  assert lam[0]["same_as"] == base_dir
  assert not os.path.exists(os.path.join(root, "lambda", "lambda_0.0051", "results.json"))

  ref_dir = tmp_path / "root" / "reference" / "baselines"
  ref_dir.mkdir(parents=True)
  ref_rows = [
    {"name": "Barlow Twins", "linear_top1": 0.93, "knn_top1": 0.73},
    {"name": "raw pixels", "linear_top1": 0.97, "knn_top1": 0.95},
  ]
  (ref_dir / "results.json").write_text(json.dumps({"rows": ref_rows}))
  collected = run.collect("loss_ablation", "local", workdir_root=root)
  by_name = {r["name"]: r for r in collected["runs"]}
  assert by_name["baseline"]["status"] == "done"
  assert by_name["baseline"]["linear_top1"] == pytest.approx(0.5051)
  assert by_name["baseline"]["final_loss"] == 123.5
  assert by_name["baseline"]["representation_rank"] == 9.5
  assert by_name["redundancy_only"]["status"] == "failed"
  assert "NonFiniteLossError" in by_name["redundancy_only"]["error"]
  assert by_name["cross_entropy"]["status"] == "missing"
  assert (
    collected["setting"]["dataset"] == run.load_config(studies.SCALES["local"].config).dataset.name
  )

  results_dir = tmp_path / "results"
  (results_dir).mkdir()
  (results_dir / "loss_ablation.notes.md").write_text("Redundancy-only diverged here.\n")
  paths = run.write_report(collected, str(results_dir))
  md = open(paths["md"]).read()
  assert "| baseline | (default) | 50.5 | 40.5 | 71.4 | 123.5 | 0.75 | 9.5 |" in md
  assert "**failed**: NonFiniteLossError" in md and "not run" in md
  assert "honest small-scale results" in md
  assert "python -m experiments.run loss_ablation --scale=local" in md
  assert "Barlow Twins 93.0 / 73.0; raw pixels 97.0 / 95.0" in md
  assert "## What we observed" in md and "Redundancy-only diverged" in md
  assert json.load(open(paths["json"]))["runs"][0]["name"] == "baseline"
  assert open(paths["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"

  lam_collected = run.collect("lambda", "local", workdir_root=root)
  lam_by_name = {r["name"]: r for r in lam_collected["runs"]}
  assert lam_by_name["lambda_0.0051"]["linear_top1"] == pytest.approx(0.5051)  # Via same_as.
  assert lam_by_name["lambda_0.02"]["linear_top1"] == pytest.approx(0.52)
  lam_paths = run.write_report(lam_collected, str(results_dir))
  assert "same config as `loss_ablation/baseline`" in open(lam_paths["md"]).read()


def test_main_collect_only_writes_the_report(tmp_path, capsys):
  results_dir = tmp_path / "out"
  code = run.main(
    [
      "projector_width",
      f"--workdir_root={tmp_path / 'none'}",
      "--collect_only",
      f"--results_dir={results_dir}",
    ]
  )
  assert code == 0
  md = (results_dir / "projector_width.md").read_text()
  assert md.count("not run") == len(studies.SCALES["local"].widths)
  assert (results_dir / "projector_width.png").stat().st_size > 1000


def test_parse_log_takes_the_last_training_scalars_and_the_error(tmp_path):
  log = tmp_path / "run.log"
  log.write_text(
    "I1129 05:18:34.2 1 logging_writer.py:48] [50] loss=250, representation_rank=39.6\n"
    "I1129 05:19:17.9 1 logging_writer.py:48] [100] loss=274.2, representation_rank=38.9\n"
    "I1129 05:19:20.0 1 logging_writer.py:48] [100] knn_accuracy=0.3\n"
    "Traceback (most recent call last):\n"
    "barlow_jax.train.NonFiniteLossError: Non-finite training loss at step 7\n"
    "ValueError: config.batch_size=100 must be divisible\n"
  )
  parsed = run.parse_log(str(log))
  assert parsed["step"] == 100
  assert parsed["scalars"] == {"loss": 274.2, "representation_rank": 38.9, "knn_accuracy": 0.3}
  assert parsed["error"] == "ValueError: config.batch_size=100 must be divisible"  # The last.
  log.write_text("barlow_jax.train.NonFiniteLossError: Non-finite training loss at step 7\n")
  assert run.parse_log(str(log))["error"].startswith("barlow_jax.train.NonFiniteLossError: Non-")
  assert run.parse_log(str(tmp_path / "missing.log")) == {"step": 0, "scalars": {}, "error": None}


def test_run_metrics_reads_metrics_jsonl_and_falls_back_to_an_old_workdirs_log(tmp_path):
  from barlow_jax import metrics_file

  log = "I1129 05:18:34.2 1 logging_writer.py:48] [50] loss=250, representation_rank=39.6\n"
  (tmp_path / run.RUN_LOG).write_text(log)
  # Written before metrics.jsonl existed: the log's scalar lines.
  assert run.last_scalars(run.run_metrics(str(tmp_path))) == (
    50,
    {"loss": 250.0, "representation_rank": 39.6},
  )
  lines = [{"step": 40, "loss": 3.0}, {"step": 60, "loss": 2.0}, {"step": 60, "knn_accuracy": 0.4}]
  (tmp_path / metrics_file.FILENAME).write_text("".join(json.dumps(x) + "\n" for x in lines))
  # metrics.jsonl, where it exists, is the only source: the log's loss=250 is not read.
  assert run.last_scalars(run.run_metrics(str(tmp_path))) == (
    60,
    {"loss": 2.0, "knn_accuracy": 0.4},
  )
  assert run.run_metrics(str(tmp_path / "nothing")) == {}


def test_sweep_plot_with_paper_line(tmp_path):
  runs = [
    {
      "name": f"batch_{b}",
      "x": b,
      "paper": p,
      "linear_top1": 0.5,
      "knn_top1": 0.4,
      "status": "done",
    }
    for b, p in ((128, 69.7), (256, 70.7), (512, 71.4))
  ]
  collected = {
    "study": "batch_size",
    "scale": "local",
    "runs": runs,
    "setting": {"dataset": "cluttered_digits"},
  }
  plots.plot_study(collected, str(tmp_path / "b.png"))
  assert (tmp_path / "b.png").stat().st_size > 1000


def test_imagenet_runs_evaluate_as_their_own_job_and_results_are_found_there(tmp_path, capsys):
  root = "gs://bucket/experiments"
  assert run.main(["loss_ablation", "--scale=imagenet", f"--workdir_root={root}", "--dry_run"]) == 0
  first = capsys.readouterr().out.splitlines()[0]
  pretrain, evaluation = first.split(" && ")
  assert "--config=configs/imagenet_resnet50.py" in pretrain
  assert "--config.eval.final=false" in pretrain and "--config.num_epochs=300.0" in pretrain
  assert shlex.split(evaluation) == [
    "python",
    "-m",
    "barlow_jax.evaluate",
    "--config=configs/eval_linear.py:imagenet_resnet50",
    f"--config.eval.backbone={root}/loss_ablation/baseline",
    f"--workdir={root}/loss_ablation/baseline/linear_eval",
  ]
  # A standalone evaluation's results.json layout is collected too.
  local_root = tmp_path / "root"
  eval_dir = local_root / "loss_ablation" / "baseline" / run.EVAL_SUBDIR
  eval_dir.mkdir(parents=True)
  (eval_dir / "results.json").write_text(json.dumps({"mode": "linear", "top1": 0.7, "top5": 0.9}))
  collected = run.collect("loss_ablation", "imagenet", workdir_root=str(local_root))
  baseline = collected["runs"][0]
  assert baseline["status"] == "done" and baseline["linear_top1"] == 0.7
  assert baseline["knn_top1"] is None

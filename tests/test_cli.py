"""barlow_jax.cli: every entry point parses absl flags; argparse spellings of the old commands stay;
a `UserError` is one line (with where a named key got its value), exit 1, no traceback, and the
commands check their paths first.

The `--help` / misspelt-flag checks run every entry point as `__main__` (runpy) through
`absl.app.run`, one after another in ONE subprocess: a fresh interpreter per entry point would
cost a jax import each.
"""

import json
import os
import subprocess
import sys

import pytest
from absl import flags
from test_preflight import fake_backbone, folder_dataset, no_backbone_load

from barlow_jax import cli, convert, evaluate, launch
from barlow_jax.benchmarks import loss as loss_benchmark
from barlow_jax.benchmarks import step as step_benchmark
from barlow_jax.config_validation import UserError

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (module, arguments before the flag, a flag only its --help lists, a misspelling of a flag).
ENTRY_POINTS = [
  ("barlow_jax.main", [], "--workdir", "--workdri=x"),
  ("barlow_jax.evaluate", [], "--workdir", "--wokrdir=x"),
  ("barlow_jax.convert", [], "--export", "--form=a.pth"),
  ("barlow_jax.launch", [], "--devices_per_process", "--num_process=2"),
  ("barlow_jax.benchmark", ["input"], "--cases", "--case=cifar_32_png"),
  ("barlow_jax.benchmark", ["step"], "--peer_variants", "--peer_variant=tuned"),
  ("barlow_jax.benchmark", ["loss"], "--max_gflop", "--method=auto"),
  ("barlow_jax.benchmark", ["memory"], "--fsdp_min_size", "--fsdp_min=1"),
  ("barlow_jax.benchmark", ["compile"], "--max_batch", "--max_bach"),
  ("barlow_jax.benchmark", ["suite"], "--out_dir", "--outdir=x"),
  ("barlow_jax.benchmarks.torch_peer", [], "--variants", "--variant=tuned"),
  ("barlow_jax.tools.show_augmentations", [], "--pairs", "--pair=3"),
  ("experiments.run", ["lambda"], "--collect_only", "--scael=local"),
]

# Runs each (module, argv) as `python -m module argv...` would, in this one process. The flags an
# entry point defines are removed after it, as a fresh process would not have them.
_DRIVER = r"""
import contextlib, io, json, runpy, sys
from absl import app, flags, logging
app.define_help_flags()
before = set(flags.FLAGS)
results = []
for module, argv in json.loads(sys.argv[1]):
  out, err = io.StringIO(), io.StringIO()
  sys.argv = [module, *argv]
  code = None
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
      code = e.code
  for name in set(flags.FLAGS) - before:
    delattr(flags.FLAGS, name)
  results.append({"code": code, "out": out.getvalue(), "err": err.getvalue()})
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def ran():
  """{(module, argv...): {"code", "out", "err"}} for --help and a misspelt flag of each."""
  cases = []
  for module, args, _, typo in ENTRY_POINTS:
    cases += [(module, [*args, "--help"]), (module, [*args, typo])]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, "-c", _DRIVER, json.dumps(cases)],
    cwd=_ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(proc.stdout.strip().splitlines()[-1])
  return {(m, *a): r for (m, a), r in zip(cases, results)}


@pytest.mark.parametrize("module, args, listed, typo", ENTRY_POINTS)
def test_help_exits_0_with_the_flags_and_a_misspelt_flag_is_refused(
  ran, module, args, listed, typo
):
  help_run = ran[(module, *args, "--help")]
  assert help_run["code"] == 0, help_run
  assert f"  {listed}" in help_run["out"] or f"  --[no]{listed[2:]}" in help_run["out"], help_run
  bad = ran[(module, *args, typo)]
  assert bad["code"] == 1, bad
  name = typo[2:].split("=")[0]
  assert f"FATAL Flags parsing error: Unknown command line flag '{name}'" in bad["err"], bad


def _flag_values() -> flags.FlagValues:
  fv = flags.FlagValues()
  flags.DEFINE_float("max_bytes", 1.0, "", flag_values=fv)
  flags.DEFINE_bool("torch", None, "", flag_values=fv)
  flags.DEFINE_multi_string("methods", ["auto"], "", flag_values=fv)
  flags.DEFINE_string("out", "", "", flag_values=fv)
  return fv


def test_argparse_spellings_become_absl_ones_up_to_a_lone_double_dash():
  argv = ["prog", "--max-bytes", "5", "--no-torch", "--methods", "auto", "dense", "--out=o.json"]
  argv += ["-h", "--", "--max-bytes", "--no-torch"]
  assert cli.argparse_spellings(argv, _flag_values()) == [
    "prog",
    "--max_bytes",
    "5",
    "--notorch",
    "--methods=auto",
    "--methods=dense",
    "--out=o.json",
    "--help",
    "--",
    "--max-bytes",
    "--no-torch",
  ]
  # Unknown names are left for absl to refuse.
  assert cli.argparse_spellings(["p", "--no-such", "--x-y=1"], _flag_values())[1:] == [
    "--no-such",
    "--x-y=1",
  ]


def test_the_old_command_lines_parse_to_the_same_values():
  fv, rest = loss_benchmark.COMMAND.parse(
    ["loss", "--n", "16", "64", "--d", "24", "--methods", "auto", "dense", "--no-torch"]
    + ["--max-bytes", "1e9", "--torch-device", "cpu", "--out", "x.json"]
  )
  assert (fv.n, fv.d, fv.methods, fv.torch) == ([16, 64], [24], ["auto", "dense"], False)
  assert (fv.max_bytes, fv.torch_device, fv.out, rest[1:]) == (1e9, "cpu", "x.json", [])
  fv, _ = step_benchmark.COMMAND.parse(["step", "--peer=torch", "--peer_variants", "reference"])
  assert (fv.peer, fv.peer_variants, fv.batch, fv.image_size) == ("torch", ["reference"], 16, 64)
  # The launcher's flags, then the program's after `--`, as absl leaves them.
  fv, rest = launch.COMMAND.parse(
    ["", "--num_processes=2", "--devices_per_process=4", "--", "--config=c.py", "--workdir=w"]
  )
  assert (fv.num_processes, fv.devices_per_process, rest[1:]) == (
    2,
    4,
    ["--config=c.py", "--workdir=w"],
  )


def test_in_process_calls_get_absls_errors_and_fresh_defaults(capsys):
  with pytest.raises(SystemExit) as e:
    step_benchmark.COMMAND.parse(["step", "--batch=0"])
  assert e.value.code == 1
  assert "--batch >= 1, --image_size >= 8" in capsys.readouterr().err
  # A second parse starts from the defaults, not from the first one's values.
  assert step_benchmark.COMMAND.parse(["step", "--batch=8"])[0].batch == 8
  assert step_benchmark.COMMAND.parse(["step"])[0].batch == 16


def test_config_overrides_parse_in_process_and_a_misspelt_key_is_a_flag_error(capsys):
  from barlow_jax.tools import show_augmentations

  argv = ["", "--config=configs/digits.py:runlocal", "--config.batch_size=12"]
  assert show_augmentations.COMMAND.parse(argv)[0].config.batch_size == 12
  with pytest.raises(SystemExit) as e:
    show_augmentations.COMMAND.parse([*argv, "--config.optim.lr_weight=0.1"])
  assert e.value.code == 1
  err = capsys.readouterr().err
  assert "--config.optim.lr_weight: the config has no key 'lr_weight'" in err
  assert 'Did you mean "lr_weights"' in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# A user's mistake on a command line: one line, exit 1, no traceback; paths first.


def _fails(capsys, command, argv):
  with pytest.raises(SystemExit) as e:
    command(["prog", *argv])
  err = capsys.readouterr().err
  assert e.value.code == 1, err
  assert "Traceback" not in err
  return err


def test_evaluate_refuses_a_file_as_workdir_before_the_evaluation(tmp_path, capsys, monkeypatch):
  no_backbone_load(monkeypatch)
  target = tmp_path / "results.txt"
  target.write_text("x")
  err = _fails(
    capsys,
    evaluate.COMMAND,
    [
      "--config=configs/eval_linear.py:digits",
      f"--config.eval.backbone={fake_backbone(tmp_path)}",
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
  backbone = fake_backbone(workdir)
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
  folder = folder_dataset(tmp_path / "data")
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

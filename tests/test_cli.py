"""barlow_jax.cli: every entry point parses absl flags; argparse spellings of the old commands stay.

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

from barlow_jax import cli, launch
from barlow_jax.benchmarks import loss as loss_benchmark
from barlow_jax.benchmarks import step as step_benchmark

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

"""Old import paths of merged modules: each old name warns DeprecationWarning naming its new home
and returns the new home's object; nothing in the project uses an old name.

`MOVED` lists, independently of the modules' tables, every name that moved and its new home.
"""

import ast
import importlib
import importlib.util
import pathlib
import subprocess
import sys

import pytest
from test_deprecations import old_uses, project_sources

import barlow_jax
from barlow_jax import _deprecations

MOVED = {
  "barlow_jax.evaluation.metrics": {
    "topk_accuracy": "barlow_jax.evaluation.features.topk_accuracy",
    "topk_counts": "barlow_jax.evaluation.features.topk_counts",
  },
  "barlow_jax.knn_monitor": {
    "is_enabled": "barlow_jax.evaluation.knn.monitor_enabled",
    "accuracy": "barlow_jax.evaluation.knn.monitor_accuracy",
  },
  "barlow_jax.evaluation.finetune": {"Classifier": "barlow_jax.models.Classifier"},
  "barlow_jax.evaluation.linear_probe": {
    "linear_head_kernel_init": "barlow_jax.models.linear_head_kernel_init",
    "crop_flip_config": "barlow_jax.data.pretrain.crop_flip_config",
    "labelled_view_a": "barlow_jax.data.pretrain.labelled_view_a",
  },
  "barlow_jax.preemption": {
    "PreemptionFlag": "barlow_jax.progress.PreemptionFlag",
    "SYNC_EVERY_STEPS": "barlow_jax.progress.SYNC_EVERY_STEPS",
  },
  "barlow_jax.train_progress": {
    "INPUT_WAIT": "barlow_jax.train.INPUT_WAIT",
    "TrainProgress": "barlow_jax.train.TrainProgress",
  },
  "barlow_jax.distributed": {"initialize": "barlow_jax.launch.initialize"},
  "barlow_jax.train_step": {"effective_rank": "barlow_jax.monitors.effective_rank"},
  "barlow_jax.finish": {"PretrainingClock": "barlow_jax.metrics_file.PretrainingClock"},
  "barlow_jax.benchmarks.input_peer": {
    "FULL": "barlow_jax.benchmarks.input.FULL",
    "HOST_PART": "barlow_jax.benchmarks.input.HOST_PART",
    "PEER": "barlow_jax.benchmarks.input.PEER",
    "WITHOUT": "barlow_jax.benchmarks.input.WITHOUT",
    "natural_jpegs": "barlow_jax.benchmarks.input.natural_jpegs",
    "pin_to_one_core": "barlow_jax.benchmarks.input.pin_to_one_core",
    "report": "barlow_jax.benchmarks.input.peer_report",
    "run": "barlow_jax.benchmarks.input.run_peer",
  },
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_each_moved_name_warns_naming_its_home_and_returns_the_homes_object(old):
  old_module = importlib.import_module(old)
  for name, new in MOVED[old].items():
    home, _, new_name = new.rpartition(".")
    with pytest.warns(DeprecationWarning, match=rf"^{old}\.{name} is deprecated .* 0\.3") as record:
      value = getattr(old_module, name)
    assert value is getattr(importlib.import_module(home), new_name), f"{old}.{name}"
    assert f"use {new} instead" in str(record[0].message), f"{old}.{name}: {record[0].message}"
    assert record[0].filename == __file__  # Points at the line that used the old name.


@pytest.mark.parametrize("old", sorted(MOVED))
def test_each_moved_table_is_the_list(old):
  assert importlib.import_module(old)._DEPRECATED == MOVED[old]


def test_a_moved_name_is_gone_from_its_old_module_namespace():
  # Found in the module's namespace, an old name would skip the table (no warning).
  for old, names in MOVED.items():
    assert not set(names) & set(vars(importlib.import_module(old))), old


def test_the_knn_monitor_is_the_old_one_under_a_new_name():
  from barlow_jax.evaluation import knn

  with pytest.warns(DeprecationWarning, match="barlow_jax.evaluation.knn.monitor_accuracy"):
    from barlow_jax.knn_monitor import accuracy
  assert accuracy is knn.monitor_accuracy
  assert _deprecations.resolve("barlow_jax.evaluation.knn.monitor_enabled") is knn.monitor_enabled


_REPO = pathlib.Path(__file__).resolve().parents[1]


def _moved_uses(source: str) -> list[str]:
  return old_uses(source, MOVED)


def test_the_project_uses_no_moved_name():
  # Also where pytest's error filter cannot see: slow tests, subprocess scripts, the notebook.
  assert _moved_uses("from barlow_jax import knn_monitor\nknn_monitor.accuracy(1, 2, 3)")
  assert _moved_uses("from barlow_jax.evaluation.finetune import Classifier")
  found = {
    str(p.relative_to(_REPO)): u for p, s in project_sources(__file__) if (u := _moved_uses(s))
  }
  assert not found, f"old import paths in use (import the new home instead): {found}"


# Old modules: gone from the package's top level, kept as tables in barlow_jax/_deprecations/.
OLD_MODULES = (
  "augment",
  "blur",
  "datasets",
  "device_augment",
  "distributed",
  "input_pipeline",
  "knn_monitor",
  "preemption",
  "train_progress",
)
_PACKAGE = _REPO / "barlow_jax"


def _run(code: str, *options: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, *options, "-c", code], capture_output=True, text=True, cwd=_REPO
  )


@pytest.mark.parametrize("name", OLD_MODULES)
def test_an_old_module_is_found_in_the_deprecations_folder(name):
  assert not (_PACKAGE / f"{name}.py").exists()
  origin = pathlib.Path(importlib.util.find_spec(f"barlow_jax.{name}").origin)
  assert origin == _PACKAGE / "_deprecations" / f"{name}.py"


def test_every_top_level_module_has_code_of_its_own():
  # A module whose body is only a deprecation table belongs in barlow_jax/_deprecations/.
  for path in sorted(_PACKAGE.glob("*.py")):
    body = ast.parse(path.read_text()).body
    own = [n for n in body if isinstance(n, ast.FunctionDef | ast.ClassDef)]
    assert own or path.name == "__init__.py", f"{path.name} only re-exports"
  assert len(list(_PACKAGE.glob("*.py"))) <= 27  # __init__.py and 26 modules.


def test_an_old_module_imports_every_way_reloads_and_warns_on_use():
  import barlow_jax.preemption as old
  from barlow_jax import preemption, progress

  assert preemption is old and old.__name__ == "barlow_jax.preemption"
  assert importlib.reload(old) is old
  with pytest.warns(DeprecationWarning, match=r"^barlow_jax\.preemption\.PreemptionFlag is dep"):
    from barlow_jax.preemption import PreemptionFlag
  assert PreemptionFlag is progress.PreemptionFlag
  with pytest.raises(AttributeError, match="barlow_jax.preemption.*no_such_name"):
    old.no_such_name  # noqa: B018
  assert str(_PACKAGE / "_deprecations") in barlow_jax.__path__


def test_importing_an_old_module_is_silent_and_using_a_name_is_an_error_under_w_error():
  names = ", ".join(OLD_MODULES)
  quiet = _run(f"from barlow_jax import {names}", "-W", "error")
  assert quiet.returncode == 0, quiet.stderr
  loud = _run("import barlow_jax.augment as a; a.solarize", "-W", "error")
  assert loud.returncode != 0
  assert "DeprecationWarning: barlow_jax.augment.solarize is deprecated" in loud.stderr
  assert "use barlow_jax.data.colour.solarize instead" in loud.stderr


def test_the_loss_stays_light():
  # The package's __init__ adds the old modules' folder and imports nothing heavy.
  probe = (
    "import sys, barlow_jax.losses;"
    "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('flax', 'tensorflow', "
    "'tensorflow_datasets', 'optax', 'orbax') or m in "
    f"{[f'barlow_jax.{n}' for n in OLD_MODULES]!r});"
    "sys.exit(f'imported {bad}' if bad else 0)"
  )
  result = _run(probe)
  assert result.returncode == 0, result.stderr + result.stdout

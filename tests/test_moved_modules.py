"""Old import paths of merged modules: each old name warns DeprecationWarning naming its new home
and returns the new home's object; nothing in the project uses an old name.

`MOVED` lists, independently of the modules' tables, every name that moved and its new home.
"""

import importlib
import pathlib

import pytest
from test_deprecations import old_uses, project_sources

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

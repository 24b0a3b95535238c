"""The run's config is derived once: its walk from `train_and_evaluate` stays in few modules and
never climbs back (`experiments/config_walk.py`; docs/architecture.md, "The rules").

The walk counts every `barlow_jax` function that receives the config or a sub-dict of it. A
module added to the walk means a part downstream reads the config again instead of taking what
`train_setup.prepare` (or `data.pretrain`, the data side's entry) derived from it.
"""

import shutil

import configs_tiny
import pytest

from experiments import config_walk

# The modules the tiny config reaches (experiments/results/house/config_walk.json): train,
# train_setup, config_validation, preflight, models, optim, data.pretrain, data.sources,
# data.device_augment (the step's view settings, `step_views_of`), train_step.
MAX_MODULES = 10


def test_a_rerun_of_a_finished_run_reads_the_config_in_few_modules(tiny_run, tmp_path):
  # The suite's finished run walked again: the setup, the state's restore, the pipeline's
  # construction and the end of the run, without training (the step is built, not traced).
  workdir = tmp_path / "run"
  shutil.copytree(tiny_run.workdir, workdir)
  result = config_walk.walk(tiny_run.config, str(workdir))
  assert result["climbs_back"] == 0, result["climb_list"]
  assert result["modules"] <= MAX_MODULES, result["module_list"]


@pytest.mark.slow
def test_the_tiny_run_reads_the_config_in_few_modules():
  # The whole walk of experiments/config_walk.py: 14 steps, the step traced (~2 minutes).
  result = config_walk.walk(configs_tiny.get_config())
  assert result["climbs_back"] == 0, result["climb_list"]
  assert result["modules"] <= MAX_MODULES, result["module_list"]

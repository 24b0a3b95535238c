"""Runs a study: each run in its own process, skipping finished runs and reusing twins.

Runs go one after another, each in its own process (a fresh jax: no memory or compilation cache
carried between differently shaped models), as `python -m barlow_jax.main --config=FILE
--workdir=ROOT/STUDY/RUN --config.KEY=VALUE ...`, with its log in ROOT/STUDY/RUN/run.log. A run
whose workdir already holds results.json is skipped, so the same command resumes a study (and an
interrupted run resumes from its checkpoint). A run whose effective config equals one already
finished at the same root and scale (the baseline appears in several studies) reuses that run's
results instead of training again.
"""

import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from etils import epath

from experiments import studies, workdirs
from experiments.plan import (
  Planned,
  apply_overrides,
  command_line,
  config_key,
  eval_command_line,
  load_config,
  plan,
)
from experiments.workdirs import EXPERIMENT_FILE, REPO_ROOT


def _finished_twin(root: str, planned: Planned, scale: str) -> str | None:
  """A finished workdir under root/*/* whose run has the same effective config, if any.

  Compared on the config each recorded (study, run) would get today, not on a digest stored at
  launch, so a key added to the schema later (with a default) does not hide a twin.
  """
  if not epath.Path(root).is_dir():
    return None
  key = config_key(planned.config)
  base = None
  for study_dir in workdirs.subdirs(root):
    for run_dir in workdirs.subdirs(workdirs.join(root, study_dir)):
      workdir = workdirs.join(root, study_dir, run_dir)
      if workdir == planned.workdir:
        continue
      info = workdirs.read_json(workdirs.join(workdir, EXPERIMENT_FILE))
      if not info or info.get("scale") != scale or info.get("same_as"):
        continue
      if not workdirs.results_path(workdir) or info.get("study") not in studies.STUDIES:
        continue
      sc = studies.SCALES[scale]
      runs = {r.name: r for r in studies.STUDIES[info["study"]](sc)}
      if info.get("run") not in runs:
        continue
      if base is None:
        base = load_config(sc.config, sc.config_arg)
      try:
        other = apply_overrides(base, {**sc.common, **runs[info["run"]].overrides})
      except ValueError:
        continue
      if config_key(other) == key:
        return workdir
  return None


def run_study(
  study: str,
  scale: str,
  *,
  workdir_root: str = "workdirs/experiments",
  only: Sequence[str] = (),
  python: str = sys.executable,
) -> list[dict[str, Any]]:
  """Trains (and evaluates) each run of the study in turn, in subprocesses; returns what happened.

  Skips a run whose workdir holds results.json, and a run whose config equals a finished one at
  the same root (it points to it instead). A failing run (NaN loss, ...) is recorded and the study
  goes on.

  Returns:
    One `{"name", "status": "done" | "skipped" | "reused" | "failed", "seconds", ...}` per run.
  """
  root = workdirs.join(workdir_root)
  outcomes = []
  for planned in plan(study, scale, workdir_root=workdir_root, only=only):
    name, workdir = planned.run.name, planned.workdir
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    key = config_key(planned.config)
    info_path = workdirs.join(workdir, EXPERIMENT_FILE)
    if workdirs.results_path(workdir):
      print(f"[{study}] {name}: results.json exists, skipped.", flush=True)
      outcomes.append({"name": name, "status": "skipped"})
      continue
    twin = _finished_twin(root, planned, scale)
    argv = command_line(scale, planned, python=python)
    info = {"study": study, "run": name, "scale": scale, "key": key, "command": shlex.join(argv)}
    if twin:
      print(f"[{study}] {name}: same config as {twin}, reusing its results.", flush=True)
      workdirs.write_json(info_path, {**info, "same_as": twin})
      outcomes.append({"name": name, "status": "reused", "same_as": twin})
      continue
    workdirs.write_json(info_path, info)
    print(f"[{study}] {name}: {shlex.join(argv)}", flush=True)
    t0 = time.perf_counter()
    evaluation = eval_command_line(scale, planned, python=python)
    with workdirs.run_log(workdir) as log:
      rc = subprocess.call(argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
      if rc == 0 and evaluation is not None:
        rc = subprocess.call(evaluation, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    status = "done" if rc == 0 else "failed"
    print(f"[{study}] {name}: {status} in {seconds:.0f} s (exit {rc}).", flush=True)
    outcomes.append({"name": name, "status": status, "seconds": seconds, "returncode": rc})
  return outcomes

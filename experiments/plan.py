"""A study at a scale -> the validated config and the command line of each of its runs.

Each run of STUDY (`experiments/studies.py`) is the scale's config file with the scale's common
overrides, then the run's own, applied to the locked config: a key that does not exist is an error
naming it, before anything trains. Nothing here runs anything.
"""

import dataclasses
import hashlib
import importlib.util
import json
import os
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from experiments import studies, workdirs
from experiments.workdirs import REPO_ROOT


@dataclasses.dataclass(frozen=True)
class Planned:
  """One run of a study at a scale, ready to launch.

  Attributes:
    run: the study's `Run` (name, its own overrides, the paper's number, plot abscissa).
    overrides: the scale's common overrides updated with the run's own (what the command sets).
    config: the scale's config with `overrides` applied (validated).
    workdir: where the run writes (ROOT/STUDY/RUN).
  """

  run: studies.Run
  overrides: Mapping[str, Any]
  config: ml_collections.ConfigDict
  workdir: str


def load_config(path: str, arg: str = "") -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file, as `--config=path[:arg]` loads it (relative to the repo).

  Raises:
    ValueError: the file does not exist or has no `get_config`.
  """
  full = path if os.path.isabs(path) else os.path.join(REPO_ROOT, path)
  if not os.path.isfile(full):
    raise ValueError(f"config file {path!r} not found (looked at {full})")
  spec = importlib.util.spec_from_file_location(f"_experiment_config_{abs(hash(full))}", full)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {path!r} defines no get_config()")
  return module.get_config(arg or None)


def apply_overrides(
  config: ml_collections.ConfigDict, overrides: Mapping[str, Any], *, where: str = ""
) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted keys set, refusing keys the config does not have.

  Args:
    config: the base config (left unchanged).
    overrides: `{"loss.lambd": 0.01, "model.projector": "64-64-64", ...}`.
    where: names the override set in error messages (e.g. "lambda/lambda_0.01").

  Returns:
    The overridden copy, locked (as `barlow_jax.main` locks it).

  Raises:
    ValueError: an unknown key (named, with the keys that do exist at that level) or a value of
      the wrong type for its key.
  """
  out = ml_collections.ConfigDict(config.to_dict())
  prefix = f"{where}: " if where else ""
  for key, value in overrides.items():
    parts = key.split(".")
    node = out
    for depth, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        parent = ".".join(parts[:depth]) or "the top level"
        known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        raise ValueError(
          f"{prefix}config override {key!r}: the config has no key {'.'.join(parts[: depth + 1])!r}"
          f" (keys under {parent}: {', '.join(known)}). Add it to barlow_jax/config.py or fix "
          "the study in experiments/studies.py."
        )
      if depth < len(parts) - 1:
        node = node[part]
    current = node[parts[-1]]
    if isinstance(current, ml_collections.ConfigDict):
      raise ValueError(f"{prefix}config override {key!r} names a group, not a value")
    if isinstance(current, tuple):
      value = tuple(value)
    try:
      node[parts[-1]] = value
    except TypeError as e:
      raise ValueError(
        f"{prefix}config override {key}={value!r}: wrong type for this key ({e})"
      ) from e
  out.lock()
  return out


def format_value(value: Any) -> str:
  """How `--config.KEY=` spells a value so that ml_collections' config_flags parses it back."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, float):
    return repr(value)
  if isinstance(value, tuple | list):
    return "(" + ", ".join(format_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def plan(
  study: str,
  scale: str,
  *,
  workdir_root: str = "workdirs/experiments",
  only: Sequence[str] = (),
) -> list[Planned]:
  """The runs of `study` at `scale`, every config built and validated (nothing runs).

  Raises:
    ValueError: unknown study, scale or `only` name, or an override the config rejects.
  """
  if study not in studies.STUDIES:
    raise ValueError(f"unknown study {study!r}; choose from {', '.join(studies.STUDIES)}")
  if scale not in studies.SCALES:
    raise ValueError(f"unknown --scale={scale!r}; choose from {', '.join(studies.SCALES)}")
  sc = studies.SCALES[scale]
  runs = studies.STUDIES[study](sc)
  names = [r.name for r in runs]
  unknown = [n for n in only if n not in names]
  if unknown:
    raise ValueError(f"--only: study {study!r} has no run {unknown}; its runs: {', '.join(names)}")
  base = load_config(sc.config, sc.config_arg)
  out = []
  for run in runs:
    if only and run.name not in only:
      continue
    overrides = {**sc.common, **run.overrides}
    config = apply_overrides(base, overrides, where=f"{study}/{run.name} at scale {scale}")
    out.append(Planned(run, overrides, config, workdirs.join(workdir_root, study, run.name)))
  return out


def command_line(scale: str, planned: Planned, *, python: str = "python") -> list[str]:
  """argv of `python -m barlow_jax.main` for one run (to be run from the repository root)."""
  sc = studies.SCALES[scale]
  config = sc.config + (f":{sc.config_arg}" if sc.config_arg else "")
  argv = [python, "-m", "barlow_jax.main", f"--config={config}", f"--workdir={planned.workdir}"]
  argv += [f"--config.{k}={format_value(v)}" for k, v in planned.overrides.items()]
  return argv


def eval_command_line(scale: str, planned: Planned, *, python: str = "python") -> list[str] | None:
  """argv of the run's standalone evaluation (into WORKDIR/linear_eval), or None if the scale's
  pretraining evaluates itself."""
  sc = studies.SCALES[scale]
  if not sc.eval_config:
    return None
  return [
    python,
    "-m",
    "barlow_jax.evaluate",
    f"--config={sc.eval_config}",
    f"--config.eval.backbone={planned.workdir}",
    f"--workdir={workdirs.join(planned.workdir, workdirs.EVAL_SUBDIR)}",
  ]


def job_line(scale: str, planned: Planned) -> str:
  """One shell line per run: pretraining, then (if the scale needs one) its evaluation."""
  line = shlex.join(command_line(scale, planned))
  evaluation = eval_command_line(scale, planned)
  return line if evaluation is None else f"{line} && {shlex.join(evaluation)}"


def config_key(config: ml_collections.ConfigDict) -> str:
  """A digest of the whole effective config: equal digests train the same run."""
  text = json.dumps(config.to_dict(), sort_keys=True, default=repr)
  return hashlib.sha256(text.encode()).hexdigest()

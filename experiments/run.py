r"""Runs one of the paper's studies at a scale, then tables and plots what each run measured.

    python -m experiments.run loss_ablation --scale=local
    python -m experiments.run projector_width --scale=cifar --workdir_root=gs://B/experiments \
        --dry_run    # one `python -m barlow_jax.main ...` line per run: one job each on a pod
    python -m experiments.run lambda --scale=local --only=lambda_0.002,lambda_0.02
    python -m experiments.run loss_ablation --scale=local --collect_only   # tables from workdirs

Each run of STUDY (`experiments/studies.py`) is the scale's config file with the scale's common
overrides, then the run's own, applied to the locked config: a key that does not exist is an error
naming it, before anything trains. Runs go one after another, each in its own process (a fresh
jax: no memory or compilation cache carried between differently shaped models), as
`python -m barlow_jax.main --config=FILE --workdir=ROOT/STUDY/RUN --config.KEY=VALUE ...`, with
its log in ROOT/STUDY/RUN/run.log. A run whose workdir already holds results.json is skipped, so
the same command resumes a study (and an interrupted run resumes from its checkpoint). A run whose
effective config equals one already finished at the same root and scale (the baseline appears in
several studies) reuses that run's results instead of training again.

Then the results of every run (results.json of the end-of-training evaluation; final loss and
collapse monitors from the run's log) go to `RESULTS_DIR/STUDY.json`, a Markdown table
`RESULTS_DIR/STUDY.md` (ours beside the paper's ImageNet numbers) and a plot
`RESULTS_DIR/STUDY.png`.
Hand-written observations in `RESULTS_DIR/STUDY.notes.md`, if present, are appended to the table.
"""

import argparse
import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

import ml_collections
from etils import epath

from experiments import studies

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_RESULTS_DIR = os.path.join(REPO_ROOT, "experiments", "results")
RUN_LOG = "run.log"
EXPERIMENT_FILE = "experiment.json"  # What the runner launched in a workdir (study, overrides).
EVAL_SUBDIR = "linear_eval"  # Standalone evaluation of a run (scales with `eval_config`).


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


# ---------------------------------------------------------------------------------------------
# Configs and overrides.


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
    out.append(Planned(run, overrides, config, _join(workdir_root, study, run.name)))
  return out


def _join(root: str, *parts: str) -> str:
  if "://" in root:  # gs://... stays a URL.
    return "/".join([root.rstrip("/"), *parts])
  return os.path.join(os.path.abspath(root), *parts)


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
    f"--workdir={_join(planned.workdir, EVAL_SUBDIR)}",
  ]


def job_line(scale: str, planned: Planned) -> str:
  """One shell line per run: pretraining, then (if the scale needs one) its evaluation."""
  line = shlex.join(command_line(scale, planned))
  evaluation = eval_command_line(scale, planned)
  return line if evaluation is None else f"{line} && {shlex.join(evaluation)}"


# ---------------------------------------------------------------------------------------------
# Running.


def config_key(config: ml_collections.ConfigDict) -> str:
  """A digest of the whole effective config: equal digests train the same run."""
  text = json.dumps(config.to_dict(), sort_keys=True, default=repr)
  return hashlib.sha256(text.encode()).hexdigest()


def _jsonable(value):
  if isinstance(value, Mapping):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, tuple | list):
    return [_jsonable(v) for v in value]
  return value


def _finished_twin(root: str, planned: Planned, scale: str) -> str | None:
  """A finished workdir under root/*/* whose run has the same effective config, if any.

  Compared on the config each recorded (study, run) would get today, not on a digest stored at
  launch, so a key added to the schema later (with a default) does not hide a twin.
  """
  if not epath.Path(root).is_dir():
    return None
  key = config_key(planned.config)
  base = None
  for study_dir in _subdirs(root):
    for run_dir in _subdirs(_join(root, study_dir)):
      workdir = _join(root, study_dir, run_dir)
      if workdir == planned.workdir:
        continue
      info = _read_json(_join(workdir, EXPERIMENT_FILE))
      if not info or info.get("scale") != scale or info.get("same_as"):
        continue
      if not _results_path(workdir) or info.get("study") not in studies.STUDIES:
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


def _subdirs(directory: str) -> list[str]:
  # Object stores list sub-directories as "name/".
  return sorted(p.name.rstrip("/") for p in epath.Path(directory).iterdir() if p.is_dir())


def _display_path(path: str | None) -> str | None:
  # Paths inside the repository are recorded relative to it (the committed JSON has no home dirs).
  if path and "://" not in path and os.path.abspath(path).startswith(REPO_ROOT + os.sep):
    return os.path.relpath(path, REPO_ROOT)
  return path


def _results_path(workdir: str) -> str | None:
  """WORKDIR/results.json (end-of-training table) or WORKDIR/linear_eval/results.json."""
  for path in (_join(workdir, "results.json"), _join(workdir, EVAL_SUBDIR, "results.json")):
    if epath.Path(path).exists():
      return path
  return None


def _read_json(path: str) -> Any:
  """The JSON at `path` (local or gs://), or None when it is missing or not JSON."""
  text = _read_text(path)
  try:
    return None if text is None else json.loads(text)
  except ValueError:
    return None


def _read_text(path: str) -> str | None:
  if not epath.Path(path).exists():
    return None
  return epath.Path(path).read_bytes().decode(errors="replace")


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
  root = _join(workdir_root)
  outcomes = []
  for planned in plan(study, scale, workdir_root=workdir_root, only=only):
    name, workdir = planned.run.name, planned.workdir
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    key = config_key(planned.config)
    info_path = _join(workdir, EXPERIMENT_FILE)
    if _results_path(workdir):
      print(f"[{study}] {name}: results.json exists, skipped.", flush=True)
      outcomes.append({"name": name, "status": "skipped"})
      continue
    twin = _finished_twin(root, planned, scale)
    argv = command_line(scale, planned, python=python)
    info = {"study": study, "run": name, "scale": scale, "key": key, "command": shlex.join(argv)}
    if twin:
      print(f"[{study}] {name}: same config as {twin}, reusing its results.", flush=True)
      _write_json(info_path, {**info, "same_as": twin})
      outcomes.append({"name": name, "status": "reused", "same_as": twin})
      continue
    _write_json(info_path, info)
    print(f"[{study}] {name}: {shlex.join(argv)}", flush=True)
    t0 = time.perf_counter()
    evaluation = eval_command_line(scale, planned, python=python)
    with _run_log(workdir) as log:
      rc = subprocess.call(argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
      if rc == 0 and evaluation is not None:
        rc = subprocess.call(evaluation, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    status = "done" if rc == 0 else "failed"
    print(f"[{study}] {name}: {status} in {seconds:.0f} s (exit {rc}).", flush=True)
    outcomes.append({"name": name, "status": status, "seconds": seconds, "returncode": rc})
  return outcomes


@contextlib.contextmanager
def _run_log(workdir: str) -> Iterator[IO[bytes]]:
  """WORKDIR/run.log opened for appending the subprocesses' output.

  A local log grows as the run goes (`tail -f` it); an object store cannot append, so a bucket's
  log is written to a local temporary file and uploaded (after the old log) when the run ends.
  """
  path = _join(workdir, RUN_LOG)
  if "://" not in path:
    with open(path, "ab") as log:
      yield log
    return
  old = _read_text(path) or ""
  with tempfile.TemporaryFile() as log:
    try:
      yield log
    finally:
      log.seek(0)
      epath.Path(path).write_bytes(old.encode() + log.read())


def _write_json(path: str, value: Any) -> None:
  epath.Path(path).write_text(json.dumps(value, indent=2, sort_keys=True))


# ---------------------------------------------------------------------------------------------
# Collecting.

# clu's LoggingWriter line: "... logging_writer.py:48] [250] loss=1.2, representation_rank=3.4".
_SCALARS_LINE = re.compile(r"logging_writer\.py:\d+\] \[(\d+)\] (.*)$")
_ERROR_LINE = re.compile(r"^([\w.]+(?:Error|Exception)): (.*)$")


def parse_log(path: str) -> dict[str, Any]:
  """The last logged scalars and the error (if the run died) from a run's log.

  Returns:
    `{"step": int, "scalars": {name: float}, "error": str | None}` (step 0, no scalars when the
    log is missing or has none).
  """
  out: dict[str, Any] = {"step": 0, "scalars": {}, "error": None}
  text = _read_text(path)
  if text is None:
    return out
  lines = text.splitlines()
  for line in lines:
    m = _SCALARS_LINE.search(line)
    if m:
      scalars = {}
      for item in m.group(2).split(", "):
        k, _, v = item.partition("=")
        try:
          scalars[k.strip()] = float(v)
        except ValueError:
          continue
      step = int(m.group(1))
      if "loss" in scalars and step >= out["step"]:  # Training scalars, not a kNN-only line.
        out["step"], out["scalars"] = step, {**out["scalars"], **scalars}
      elif step >= out["step"]:
        out["scalars"].update(scalars)
    e = _ERROR_LINE.match(line.strip())
    if e:
      out["error"] = f"{e.group(1)}: {e.group(2)}"[:300]
  return out


def _accuracies(results: Mapping[str, Any]) -> dict[str, Any]:
  """Linear / kNN top-1 from either results.json layout (end-of-training table, or a standalone
  `barlow_jax.evaluate` linear / kNN job)."""
  if "rows" in results:
    row = results["rows"][0]
    return {
      "linear_top1": row.get("linear_top1"),
      "linear_top5": row.get("linear_top5"),
      "knn_top1": row.get("knn_top1"),
      "pretrain_seconds": results.get("pretrain_seconds"),
      "pretrain_steps": results.get("pretrain_steps"),
      "num_train": results.get("num_train"),
    }
  return {
    "linear_top1": results.get("top1"),
    "linear_top5": results.get("top5"),
    "knn_top1": results.get("knn_top1"),
    "num_train": results.get("num_train"),
  }


def collect(
  study: str, scale: str, *, workdir_root: str = "workdirs/experiments", only: Sequence[str] = ()
) -> dict[str, Any]:
  """What every run of the study measured, from its workdir (JSON-able; written as STUDY.json).

  A run without results.json is "missing" (not run yet) or "failed" (its log ends in an error).
  """
  sc = studies.SCALES[scale]
  planned = plan(study, scale, workdir_root=workdir_root, only=only)
  runs = []
  for p in planned:
    source = p.workdir
    info = _read_json(_join(p.workdir, EXPERIMENT_FILE)) or {}
    if info.get("same_as"):
      source = info["same_as"]
    found = _results_path(source)
    results = _read_json(found) if found else None
    log = parse_log(_join(source, RUN_LOG))
    entry: dict[str, Any] = {
      "name": p.run.name,
      "overrides": _jsonable(dict(p.run.overrides)),
      "x": p.run.x,
      "paper": p.run.paper,
      "note": p.run.note,
      "workdir": _display_path(p.workdir),
      "same_as": _display_path(info.get("same_as")),
      "last_logged_step": log["step"],
      "final_loss": log["scalars"].get("loss"),
      "representation_rank": log["scalars"].get("representation_rank"),
      "embedding_std": log["scalars"].get("embedding_std"),
      "corr_diag_mean": log["scalars"].get("corr_diag_mean"),
      "online_probe_accuracy": log["scalars"].get("probe_accuracy"),
    }
    if results is not None:
      entry.update(status="done", **_accuracies(results))
    elif log["error"]:
      entry.update(status="failed", error=log["error"])
    else:
      entry.update(status="missing")
    runs.append(entry)
  references = []
  ref = _read_json(_join(workdir_root, "reference", "baselines", "results.json"))
  for row in (ref or {}).get("rows", []):
    references.append({k: row.get(k) for k in ("name", "linear_top1", "knn_top1")})
  base = planned[0].config if planned else load_config(sc.config, sc.config_arg)
  common = _jsonable(dict(sc.common))
  return {
    "study": study,
    "scale": scale,
    "config": sc.config + (f":{sc.config_arg}" if sc.config_arg else ""),
    "common_overrides": common,
    "setting": {
      "dataset": base.dataset.name,
      "backbone": f"{base.model.backbone} (width {base.model.width}, {base.model.stem} stem)",
      "projector": base.model.projector,
      "batch_size": int(base.batch_size),
      "num_train_steps": int(base.num_train_steps),
      "num_epochs": float(base.num_epochs),
      "optimizer": base.optim.name,
      "seed": int(base.seed),
    },
    "command": f"python -m experiments.run {study} --scale={scale}",
    "runs": runs,
    # The same pretraining evaluated beside random-init and raw-pixel features (study "reference").
    "references": references,
  }


# ---------------------------------------------------------------------------------------------
# Reporting.


def _pct(value: float | None) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "—"
  return f"{100 * value:.1f}"


def _num(value: float | None, fmt: str = "{:.4g}") -> str:
  return "—" if value is None else fmt.format(value)


def _describe(overrides: Mapping[str, Any]) -> str:
  if not overrides:
    return "(default)"
  return ", ".join(f"`{k}={format_value(v)}`" for k, v in overrides.items())


def results_markdown(collected: Mapping[str, Any], notes: str = "") -> str:
  """The study's table (ours beside the paper's), its setting and how to regenerate it."""
  s = collected["setting"]
  runs = collected["runs"]
  steps = s["num_train_steps"]
  num_train = next((r.get("num_train") for r in runs if r.get("num_train")), None)
  if steps > 0:
    length = f"{steps} steps of batch {s['batch_size']}"
    if num_train:
      length += f" ({steps * s['batch_size'] / num_train:.1f} epochs)"
  else:
    length = f"{s['num_epochs']:g} epochs of batch {s['batch_size']}"
  lines = [
    f"# {collected['study']} (scale `{collected['scale']}`)",
    "",
    f"Ours: {s['dataset']}, {s['backbone']}, projector {s['projector']} unless the run changes "
    f"it, {s['optimizer']}, {length}, one seed ({s['seed']}); linear probe and weighted kNN on "
    f"the frozen backbone, top-1 % on the held-out split. Config `{collected['config']}` with "
    f"{_describe(collected['common_overrides'])}.",
  ]
  if collected["scale"] == "local":
    lines += [
      "",
      "**These are honest small-scale results**: a 2-CPU-core budget on a toy dataset, a short "
      "schedule and one seed, so differences of a few points are within noise. The paper's "
      "column is ImageNet, ResNet-50, 300 epochs, linear top-1 (docs/reference.md §1, §6): compare "
      "the ordering, not the values.",
    ]
  refs = collected.get("references") or []
  if refs:
    cells = "; ".join(f"{r['name']} {_pct(r['linear_top1'])} / {_pct(r['knn_top1'])}" for r in refs)
    lines += [
      "",
      f"For scale, on the same data and evaluation (linear / kNN top-1 %, from `python -m "
      f"experiments.run reference --scale={collected['scale']}`): {cells}.",
    ]
  lines += [
    "",
    f"Regenerate: `{collected['command']}` (from the repository root; finished runs are reused).",
    "",
    f"![{collected['study']}]({collected['study']}.png)",
    "",
    "| run | overrides | linear top-1 (ours) | kNN top-1 (ours) | paper (ImageNet top-1) | "
    "final loss | mean C_ii | rep. rank | notes |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in runs:
    notes_cell = []
    if r.get("note"):
      notes_cell.append(r["note"])
    if r.get("same_as"):
      notes_cell.append(
        f"same config as `{os.path.basename(os.path.dirname(r['same_as']))}/"
        f"{os.path.basename(r['same_as'])}`"
      )
    if r["status"] == "failed":
      notes_cell.append(f"**failed**: {r.get('error') or 'see run.log'}")
    elif r["status"] == "missing":
      notes_cell.append("not run")
    lines.append(
      f"| {r['name']} | {_describe(r['overrides'])} | {_pct(r.get('linear_top1'))} | "
      f"{_pct(r.get('knn_top1'))} | {_num(r.get('paper'), '{:.1f}')} | "
      f"{_num(r.get('final_loss'))} | {_num(r.get('corr_diag_mean'), '{:.2f}')} | "
      f"{_num(r.get('representation_rank'), '{:.1f}')} | "
      f"{'; '.join(notes_cell)} |"
    )
  lines += [
    "",
    "At the last logged training step, on one training batch: final loss (its scale depends on "
    "the variant, lambda and width: compare it only within a run); mean C_ii, the mean diagonal "
    "of the two views' embedding cross-correlation (1 = the views agree on every feature, 0 = "
    "the invariance is lost); rep. rank, the effective rank (exp of the entropy of the "
    "normalised singular values) of the backbone representations (1 = collapsed to a line).",
  ]
  if notes.strip():
    lines += ["", "## What we observed", "", notes.strip()]
  return "\n".join(lines) + "\n"


def write_report(
  collected: Mapping[str, Any], results_dir: str = DEFAULT_RESULTS_DIR
) -> dict[str, str]:
  """Writes STUDY.json, STUDY.md (with STUDY.notes.md appended if present) and STUDY.png."""
  from experiments import plots

  epath.Path(results_dir).mkdir(parents=True, exist_ok=True)
  study = collected["study"]
  paths = {kind: _join(results_dir, f"{study}.{kind}") for kind in ("json", "md", "png")}
  notes = _read_text(_join(results_dir, f"{study}.notes.md")) or ""
  _write_json(paths["json"], collected)
  epath.Path(paths["md"]).write_text(results_markdown(collected, notes))
  plots.plot_study(collected, paths["png"])
  return paths


# ---------------------------------------------------------------------------------------------
# Command line.


def default_results_dir(scale: str) -> str:
  """experiments/results for the `local` scale (the committed tables), a subfolder for others."""
  return DEFAULT_RESULTS_DIR if scale == "local" else os.path.join(DEFAULT_RESULTS_DIR, scale)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m experiments.run", description=__doc__.split("\n\n")[0]
  )
  parser.add_argument("study", choices=sorted(studies.STUDIES))
  parser.add_argument("--scale", default="local", choices=sorted(studies.SCALES))
  parser.add_argument(
    "--workdir_root", default="", help="default: workdirs/experiments/SCALE (one tree per scale)"
  )
  parser.add_argument("--only", default="", help="comma-separated run names (default: all)")
  parser.add_argument("--dry_run", action="store_true", help="print the command lines only")
  parser.add_argument(
    "--collect_only", action="store_true", help="train nothing; table what the workdirs hold"
  )
  parser.add_argument(
    "--results_dir", default="", help="default: experiments/results (local), else .../SCALE"
  )
  args = parser.parse_args(argv)
  args.workdir_root = args.workdir_root or os.path.join("workdirs", "experiments", args.scale)
  args.results_dir = args.results_dir or default_results_dir(args.scale)
  only = [n for n in args.only.split(",") if n]
  try:
    planned = plan(args.study, args.scale, workdir_root=args.workdir_root, only=only)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.dry_run:
    for p in planned:
      print(job_line(args.scale, p))
    return 0
  outcomes = []
  if not args.collect_only:
    outcomes = run_study(args.study, args.scale, workdir_root=args.workdir_root, only=only)
  # The report covers the whole study (runs not done yet show as "not run").
  collected = collect(args.study, args.scale, workdir_root=args.workdir_root)
  paths = write_report(collected, args.results_dir)
  print(f"Wrote {paths['md']}, {paths['png']}, {paths['json']}.")
  failed = [o["name"] for o in outcomes if o["status"] == "failed"]
  if failed:
    print(f"{len(failed)} run(s) failed: {', '.join(failed)} (see the table and their run.log).")
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""What every run of a study measured, from its workdir: results.json and metrics.jsonl.

Accuracies come from the run's results.json (the end-of-training table, or a standalone
`barlow_jax.evaluate` job's); the training scalars at the end of the run (loss, mean C_ii, rank,
...) from its `metrics.jsonl` (`barlow_jax.metrics_file.read_metrics`), or, for a workdir written
before that file existed, from the scalar lines of its log (`experiments.legacy_log`). Why a run
without results failed is the last exception line of its log (`workdirs.read_error`).
"""

from collections.abc import Mapping, Sequence
from typing import Any

from etils import epath

from experiments import legacy_log, studies, workdirs
from experiments.plan import Planned, load_config, plan
from experiments.workdirs import EXPERIMENT_FILE, RUN_LOG


def last_scalars(metrics: Mapping[int, Mapping[str, float]]) -> tuple[int, dict[str, float]]:
  """`(step, scalars)` at the end of a run from `{step: {name: value}}`: the last step that
  logged a training loss (0 if none), and the last logged value of every scalar (the kNN
  monitor's, which has a line of its own, included)."""
  step = max((s for s, scalars in metrics.items() if "loss" in scalars), default=0)
  merged: dict[str, float] = {}
  for s in sorted(metrics):
    merged.update(metrics[s])
  return step, merged


def run_metrics(workdir: str) -> dict[int, dict[str, float]]:
  """`{step: {name: value}}` of a run: its metrics.jsonl, else (a workdir written before
  metrics.jsonl existed) the scalar lines of its run.log; `{}` when it has neither."""
  # Here, not at the top: metrics_file imports clu (and with it TensorFlow), which planning and
  # `--dry_run` do not need.
  from barlow_jax import metrics_file

  if epath.Path(workdirs.join(workdir, metrics_file.FILENAME)).exists():
    return metrics_file.read_metrics(workdir)
  return legacy_log.read_log_metrics(workdirs.join(workdir, RUN_LOG))


def parse_log(path: str) -> dict[str, Any]:
  """The last logged scalars and the error (if the run died) from a run's log alone (a workdir
  written before metrics.jsonl; `run_metrics` reads either).

  Returns:
    `{"step": int, "scalars": {name: float}, "error": str | None}` (step 0, no scalars when the
    log is missing or has none).
  """
  step, scalars = last_scalars(legacy_log.read_log_metrics(path))
  return {"step": step, "scalars": scalars, "error": workdirs.read_error(path)}


def jsonable(value):
  if isinstance(value, Mapping):
    return {k: jsonable(v) for k, v in value.items()}
  if isinstance(value, tuple | list):
    return [jsonable(v) for v in value]
  return value


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


def collect_run(planned: Planned) -> dict[str, Any]:
  """What one planned run measured (its twin's results where it reuses a finished run's):
  status "done" (results.json), "failed" (no results; its log ends in an error) or "missing"."""
  info = workdirs.read_json(workdirs.join(planned.workdir, EXPERIMENT_FILE)) or {}
  source = info.get("same_as") or planned.workdir
  found = workdirs.results_path(source)
  results = workdirs.read_json(found) if found else None
  step, scalars = last_scalars(run_metrics(source))
  entry: dict[str, Any] = {
    "name": planned.run.name,
    "overrides": jsonable(dict(planned.run.overrides)),
    "x": planned.run.x,
    "paper": planned.run.paper,
    "note": planned.run.note,
    "workdir": workdirs.display_path(planned.workdir),
    "same_as": workdirs.display_path(info.get("same_as")),
    "last_logged_step": step,
    "final_loss": scalars.get("loss"),
    "representation_rank": scalars.get("representation_rank"),
    "embedding_std": scalars.get("embedding_std"),
    "corr_diag_mean": scalars.get("corr_diag_mean"),
    "online_probe_accuracy": scalars.get("probe_accuracy"),
  }
  if results is not None:
    entry.update(status="done", **_accuracies(results))
  elif error := workdirs.read_error(workdirs.join(source, RUN_LOG)):
    entry.update(status="failed", error=error)
  else:
    entry.update(status="missing")
  return entry


def collect(
  study: str, scale: str, *, workdir_root: str = "workdirs/experiments", only: Sequence[str] = ()
) -> dict[str, Any]:
  """What every run of the study measured, from its workdir (JSON-able; written as STUDY.json).

  A run without results.json is "missing" (not run yet) or "failed" (its log ends in an error).
  """
  sc = studies.SCALES[scale]
  planned = plan(study, scale, workdir_root=workdir_root, only=only)
  references = []
  ref = workdirs.read_json(workdirs.join(workdir_root, "reference", "baselines", "results.json"))
  for row in (ref or {}).get("rows", []):
    references.append({k: row.get(k) for k in ("name", "linear_top1", "knn_top1")})
  base = planned[0].config if planned else load_config(sc.config, sc.config_arg)
  return {
    "study": study,
    "scale": scale,
    "config": sc.config + (f":{sc.config_arg}" if sc.config_arg else ""),
    "common_overrides": jsonable(dict(sc.common)),
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
    "runs": [collect_run(p) for p in planned],
    # The same pretraining evaluated beside random-init and raw-pixel features (study "reference").
    "references": references,
  }

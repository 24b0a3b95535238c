"""The end of a pretraining run: done once per run, by process 0, stoppable, never redone worse.

- The pretraining's wall time is read from the workdir (`pretraining.json`, summed over every
  invocation of a resumed run by `metrics_file.PretrainingClock`), so an evaluation computed later
  (a rerun with other evaluation settings, or one that SIGTERM interrupted) matches the supervised
  reference to the real pretraining time, not to the seconds of a rerun that trained nothing.
- The final evaluation runs on process 0's devices while the other processes wait for it at a
  barrier; only process 0 writes and prints. (Its data are small in-memory arrays, so process 0
  alone is the simple and complete way; a run of several hosts would gain little from spreading
  a few minutes of evaluation.)
- SIGTERM during the evaluation stops it at the next row or step boundary; nothing is written
  (results files are replaced whole, atomically, only at the end) and the same command computes
  it again.
- Every recorded result names what it describes: results.json holds `checkpoint_step` and
  `backbone_sha256` (`backbone_digest` of the backbone's arrays), results.md says them in its last
  line, and pretraining.json follows the run's last checkpoint (a finished run extended with a
  larger `num_train_steps` records the new steps and time).
- A workdir whose results were computed from the same backbone with the same evaluation settings
  reports them and leaves every file as it is; other settings, or another backbone (the run was
  extended, or its results predate these records and name other steps), recompute them with the
  recorded pretraining time. Results that cannot be recomputed (the time-matched supervised
  reference without a recorded time) are kept marked stale: `"stale"` in results.json and a
  first line of results.md saying which backbone they describe and which the run now has.
"""

import hashlib
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from barlow_jax import checkpointing, parallel, progress, train_state
from barlow_jax._deprecations import deprecation_getattr
from barlow_jax.evaluation import final_table

# The names this module had before they moved (removed in 0.3).
_DEPRECATED = {"PretrainingClock": "barlow_jax.metrics_file.PretrainingClock"}
__getattr__ = deprecation_getattr(__name__, _DEPRECATED)

# How long the other processes wait for process 0's evaluation (the coordination service's
# heartbeats still stop them at once if process 0 dies).
WAIT_TIMEOUT_S = 24 * 3600
# The config sections that determine the final table (the supervised reference uses the
# pretraining's optimizer, batch size and view-A crop).
_EVALUATION_KEYS = ("dataset", "model", "augment", "optim", "eval", "batch_size", "seed")


def close_pretraining(setup, state, train_seconds: float) -> None:
  """The pretraining's end, after its last checkpoint was saved: waits for the checkpoint to
  commit, records the run as finished in pretraining.json, and exports the backbone.

  Args:
    setup: the run's `train_setup.RunSetup`. state: the final `TrainState`.
    train_seconds: this invocation's pretraining seconds (`metrics_file.PretrainingClock`).
  """
  manager, total_steps = setup.manager, setup.total_steps
  manager.wait_until_finished()
  manager.close()
  # Written once, when the last checkpoint is committed; a rerun keeps the original record.
  setup.clock.saved(total_steps, train_seconds, total_steps=total_steps, finished=True)
  export = os.path.join(setup.workdir, checkpointing.BACKBONE)
  # A rerun of a finished run exports again only a backbone directory that is missing or torn.
  if setup.start_step < total_steps or not checkpointing.is_backbone_dir(export):
    logging.info("Exporting the backbone to %s.", export)
    train_state.write_backbone(state, setup.model_config, export)


def evaluation_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config sections the final table depends on, as JSON-comparable plain values."""
  import json

  plain = json.loads(config.to_json_best_effort(sort_keys=True))
  return {key: plain[key] for key in _EVALUATION_KEYS if key in plain}


def backbone_digest(variables: Mapping[str, Any]) -> str:
  """sha256 (hex) of a backbone's `{"params", "batch_stats"}` host arrays: paths, dtypes, shapes
  and bytes, in the tree's path order. Equal digests mean the same backbone, bit for bit."""
  digest = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(dict(variables))[0]
  for path, leaf in leaves:
    array = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype.str}|{array.shape}|".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def final_evaluation(
  config: ml_collections.ConfigDict,
  workdir: str,
  backbone: Mapping[str, Any],
  *,
  should_stop: Callable[[], bool],
  checkpoint_step: int | None = None,
) -> tuple[dict[str, Any] | None, bool]:
  """The run's results table, computed once (on process 0) or reported from the workdir.

  Every process calls it.

  Args:
    config: the run config. workdir: the run's directory (shared by every process).
    backbone: `{"params", "batch_stats"}` of the trained backbone (jax arrays of the run, any
      sharding: they are gathered to host NumPy only when the table is computed).
    should_stop: true once SIGTERM or Ctrl-C arrived (polled by process 0 between rows and steps).
    checkpoint_step: the checkpoint step `backbone` is from (default: pretraining.json's step);
      recorded in results.json as `checkpoint_step` beside `backbone_sha256`.

  Returns:
    (results as in results.json, or None when stopped; whether SIGTERM / SIGINT stopped it).
  """
  settings = evaluation_settings(config)
  existing = checkpointing.read_json(os.path.join(workdir, checkpointing.RESULTS_JSON))
  record = checkpointing.read_json(os.path.join(workdir, checkpointing.PRETRAINING_JSON)) or {}
  seconds = record.get("seconds")
  if checkpoint_step is None:
    checkpoint_step = record.get("step")
  variables = jax.tree.map(parallel.to_host, dict(backbone))
  source = {
    "checkpoint_step": None if checkpoint_step is None else int(checkpoint_step),
    "backbone_sha256": backbone_digest(variables),
  }
  if existing is not None:
    changed = _backbone_change(existing, source)
    reason = _keep_reason(existing, settings, seconds, config, changed)
    if reason and changed:
      _mark_stale(workdir, existing, changed)
      _report_existing(workdir, reason)
      return existing, False
    if reason:
      _report_existing(workdir, reason)
      return existing, False
    logging.info(
      "Final evaluation: %s since %s/results.json was written: recomputing it with the recorded "
      "pretraining time (%s s).",
      changed or "the settings changed",
      workdir,
      seconds,
    )
  results, stopped = None, False
  if jax.process_index() == 0:
    try:
      results = final_table.run_final_evaluation(
        config,
        workdir,
        variables,
        pretrain_seconds=seconds,
        pretrain_steps=record.get("step") if checkpoint_step is None else int(checkpoint_step),
        should_stop=should_stop,
        settings=settings,
        source=source,
      )
    except progress.Stopped as e:
      logging.warning("%s; nothing was written. Rerun the same command to finish it.", e)
      stopped = True
    finally:
      wait_for_process_0("final_evaluation")
  else:
    logging.info("Waiting for process 0's final evaluation.")
    wait_for_process_0("final_evaluation")
    results = checkpointing.read_json(os.path.join(workdir, checkpointing.RESULTS_JSON))
    stopped = (
      results is None
      or results.get("evaluation_settings") != settings
      or results.get("backbone_sha256", source["backbone_sha256"]) != source["backbone_sha256"]
    )
    results = None if stopped else results
  return results, stopped


def _backbone_change(existing: Mapping[str, Any], source: Mapping[str, Any]) -> str:
  """How the backbone differs from the one `existing` results describe ("" when the same)."""
  step, digest = source["checkpoint_step"], source["backbone_sha256"]
  if "backbone_sha256" in existing:
    if existing["backbone_sha256"] == digest:
      return ""
    return (
      f"the backbone changed (results of step {existing.get('checkpoint_step')}, backbone "
      f"{existing['backbone_sha256'][:12]}; now step {step}, backbone {digest[:12]})"
    )
  # Written before the backbone was recorded: its pretraining steps are all there is to compare.
  old_steps = existing.get("pretrain_steps")
  if old_steps is not None and step is not None and int(old_steps) != int(step):
    return f"the backbone changed (results of step {old_steps}; now step {step})"
  return ""


def _mark_stale(workdir: str, existing: dict[str, Any], changed: str) -> None:
  """Process 0 records in results.json / results.md that they describe an older backbone."""
  note = f"STALE: {changed}; these results describe the older backbone."
  if jax.process_index() != 0 or existing.get("stale") == note:
    return
  existing["stale"] = note
  checkpointing.write_json(os.path.join(workdir, checkpointing.RESULTS_JSON), existing)
  md = checkpointing.path(workdir) / checkpointing.RESULTS_MD
  text = md.read_text() if md.exists() else ""
  if text.startswith("STALE: "):
    text = text.split("\n", 2)[-1]
  checkpointing.write_text(os.fspath(md), f"{note}\n\n{text}")


def _report_existing(workdir: str, reason: str) -> None:
  """Process 0 prints the workdir's results.md, saying why it stands."""
  if jax.process_index() == 0:
    logging.info("Final evaluation: %s: reporting %s/results.md.", reason, workdir)
    md = checkpointing.path(workdir) / checkpointing.RESULTS_MD
    if md.exists():
      print(md.read_text(), flush=True)


def _keep_reason(existing, settings, seconds, config, changed: str = "") -> str:
  """Why the results in the workdir stand as they are ("" when they should be recomputed)."""
  needs_time = (
    config.eval.baselines and config.eval.supervised and config.eval.supervised_match == "time"
  )
  if changed:
    if needs_time and seconds is None:
      return (
        f"{changed}, but the pretraining time is not recorded (the time-matched supervised "
        "reference needs it); the old results are kept, marked stale"
      )
    return ""
  if "evaluation_settings" not in existing:
    return "the workdir's results predate the record of their settings; they are kept"
  if existing["evaluation_settings"] == settings:
    return "this run's results were computed with these settings"
  if needs_time and seconds is None:
    return (
      "the settings changed, but the pretraining time is not recorded (the time-matched "
      "supervised reference needs it); the results computed with the original settings are kept"
    )
  return ""


def wait_for_process_0(name: str) -> None:
  """Every process waits here until all reach the barrier `name` (no-op with one process)."""
  if jax.process_count() == 1:
    return
  from orbax.checkpoint import multihost

  t0 = time.perf_counter()
  multihost.get_barrier_sync_fn()(key=f"barlow_jax_{name}", timeout_ms=WAIT_TIMEOUT_S * 1000)
  logging.info("%s: processes joined after %.0f s.", name, time.perf_counter() - t0)

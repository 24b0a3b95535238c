"""The default job's final table: Barlow Twins against random init, raw pixels and a supervised
reference; its targets, its Markdown, and the results files of every evaluation.
"""

import functools
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from barlow_jax import checkpointing, parallel, progress
from barlow_jax.evaluation import baselines
from barlow_jax.evaluation.baselines import recalibrate_batch_stats, supervised_row
from barlow_jax.evaluation.features import (
  LabelledSplits,
  create_backbone,
  init_backbone,
  load_labelled_splits,
  round_to,
  split_features,
)
from barlow_jax.evaluation.knn import knn_kwargs_from_config
from barlow_jax.evaluation.linear_probe import (
  probe_kwargs_from_config,
)

STANDARDISED_PIXELS = "raw pixels, per-image standardised (the backbone's input step)"


# Long by its docstring (the table's definition); the steps are the helpers below.
def run_final_evaluation(
  config: ml_collections.ConfigDict,
  workdir: str,
  variables: Mapping[str, Any],
  *,
  pretrain_seconds: float | None = None,
  pretrain_steps: int | None = None,
  mesh: Mesh | None = None,
  should_stop: Callable[[], bool] | None = None,
  settings: Mapping[str, Any] | None = None,
  source: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
  """The end-of-pretraining results table for a labelled in-memory dataset; writes it to workdir.

  Linear probe ("features" protocol: standardised features, SGD momentum 0.9, lr 0.3 per 256,
  wd 1e-6, cosine, `config.eval.probe_epochs`) and weighted kNN (`config.eval.knn_k`,
  `knn_temperature`) on `config.dataset.eval_split`, trained on `config.dataset.probe_split`, for
    (a) the pretrained backbone;
    (b) the same architecture at random init (seed `config.seed`), with its initial BN statistics
        and with BN statistics recalibrated on the training images;
    (c) raw pixels (the normalised images, flattened); with `config.model.standardize_input`, also
        those pixels after the backbone's per-image standardisation, a stricter floor;
    (d) the same architecture trained with labels (cross-entropy, the pretraining's optimizer,
        learning rates and schedule from `config.optim`, the pretraining's crop + flip settings of
        view A, batch `config.batch_size`) for the same wall time
        (`config.eval.supervised_match="time"`, needs `pretrain_seconds`) or number of steps
        ("steps") as pretraining; its probe, kNN and own-head accuracy.
  (b)-(d) only when `config.eval.baselines` (and `config.eval.supervised` for (d)). The targets
  (`table_targets`): (a)'s linear top-1 against the stronger of linear / kNN over both (b)
  variants and the raw pixels, and (a) against every floor ((b) and (c)) on each probe.

  Args:
    config: the pretraining config. workdir: where results.json / results.md go.
    variables: the trained BarlowTwins variables (or the backbone's), `{"params", "batch_stats"}`.
    pretrain_seconds: wall time of pretraining (sizes (d) when matching time; recorded).
    pretrain_steps: steps of pretraining (sizes (d) when matching steps; recorded). Default: the
      config's total steps.
    mesh: default one "data" axis over this process's devices.
    should_stop: polled between rows and between the supervised reference's steps; when it
      returns True, `progress.Stopped` is raised and nothing is written.
    settings: recorded as results["evaluation_settings"] (what the table was computed with;
      `barlow_jax.finish` compares it on a rerun).
    source: what the backbone is (`{"checkpoint_step", "backbone_sha256"}`, from
      `barlow_jax.finish`), recorded in results.json and named in results.md.

  Each row is logged as it starts (with the ETA of the rest) and ends; the supervised reference
  logs its steps' progress.

  Returns:
    {"rows": [...], "targets": {...}, ...} as written to results.json.

  Raises:
    progress.Stopped: `should_stop()` became true (SIGTERM).
  """
  mesh = parallel.local_mesh() if mesh is None else mesh
  total_t0 = time.perf_counter()
  data = load_table_data(config)
  rows = _TableRows(config, data, mesh, should_stop)
  rows.add_backbone("Barlow Twins", lambda: variables)
  if config.eval.baselines:
    _add_baseline_rows(rows, pretrain_seconds=pretrain_seconds, pretrain_steps=pretrain_steps)
  results = _table_results(config, data, rows.rows, pretrain_seconds, pretrain_steps)
  results["eval_seconds"] = time.perf_counter() - total_t0
  if settings is not None:
    results["evaluation_settings"] = dict(settings)
  if source is not None:
    results.update(source)
  write_results(workdir, results)
  return results


def load_table_data(config: ml_collections.ConfigDict) -> LabelledSplits:
  """`config.dataset.probe_split` (train) and `eval_split` (test) as in-memory arrays.

  Raises:
    ValueError: either split is empty (the message names both keys and `config.eval.final`).
  """
  if not config.dataset.probe_split or not config.dataset.eval_split:
    raise ValueError(
      "the final evaluation needs labelled data: set config.dataset.probe_split and "
      "config.dataset.eval_split, or config.eval.final=False"
    )
  return load_labelled_splits(config)


def _table_results(config, data: LabelledSplits, rows, pretrain_seconds, pretrain_steps) -> dict:
  """results.json without its "eval_seconds" and "evaluation_settings"."""
  return {
    "dataset": config.dataset.name,
    "probe_split": config.dataset.probe_split,
    "eval_split": config.dataset.eval_split,
    "num_train": len(data.train_x),
    "num_eval": len(data.test_x),
    "num_classes": data.num_classes,
    "seed": int(config.seed),
    "backbone": f"{config.model.backbone} width {config.model.width} stem {config.model.stem}",
    "pretrain_seconds": pretrain_seconds,
    "pretrain_steps": pretrain_steps,
    "probe": {"protocol": "features", **probe_kwargs_from_config(config)},
    "knn": knn_kwargs_from_config(config),
    "rows": rows,
    "targets": table_targets(rows),
  }


class _TableRows:
  """The table's rows as they are computed: each one a logged, stoppable phase."""

  def __init__(self, config, data: LabelledSplits, mesh: Mesh, should_stop):
    self.config, self.data, self.mesh, self.should_stop = config, data, mesh, should_stop
    self.backbone = create_backbone(config.model)
    self.standardised = bool(config.eval.baselines and config.model.get("standardize_input", False))
    self.supervised = bool(config.eval.baselines and config.eval.supervised)
    num_phases = 1 + (3 + self.standardised + self.supervised) * bool(config.eval.baselines)
    self.phases = progress.Phases("Final evaluation", num_phases, should_stop)
    self.rows: list[dict[str, Any]] = []

  def features(self, variables) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) features of the backbone with `variables`."""
    return split_features(self.backbone, variables, self.data, mesh=self.mesh)

  def evaluate(self, name: str, train_f, test_f, **extra) -> dict[str, Any]:
    """A row of [N, D] train / [M, D] test features: linear probe + kNN."""
    d = self.data
    return baselines.evaluate_features(
      name,
      train_f,
      d.train_y,
      test_f,
      d.test_y,
      num_classes=d.num_classes,
      config=self.config,
      **extra,
    )

  def add_backbone(self, name: str, variables_fn: Callable[[], Mapping[str, Any]]) -> None:
    """A row of the backbone's features with `variables_fn()` (called inside the phase)."""
    self.add(name, lambda: self.evaluate(name, *self.features(variables_fn())))

  def add_pixels(self, name: str, fn: Callable[[np.ndarray], Any]) -> None:
    """A row of `fn(images)`, flattened to [N, S * S * 3]."""
    flat = lambda x: np.asarray(x).reshape(len(x), -1)
    self.add(
      name, lambda: self.evaluate(name, flat(fn(self.data.train_x)), flat(fn(self.data.test_x)))
    )

  def add(self, name: str, compute: Callable[[], dict[str, Any]]) -> None:
    """Appends `compute()` as one logged phase (stops between phases when asked to)."""
    self.phases.begin(name)
    out = compute()
    self.phases.end()
    logging.info(
      "Final evaluation: %s: linear top-1 %.1f%%, kNN top-1 %.1f%%",
      name,
      100 * out["linear_top1"],
      100 * out["knn_top1"],
    )
    self.rows.append(out)


def _add_baseline_rows(rows: _TableRows, *, pretrain_seconds, pretrain_steps) -> None:
  """Rows (b)-(d) of `run_final_evaluation`, in the table's order."""
  config, data, mesh = rows.config, rows.data, rows.mesh
  # Built inside the first row that needs it, so its compilation is part of a logged phase.
  random_vars = functools.cache(
    lambda: init_backbone(rows.backbone, int(data.train_x.shape[1]), int(config.seed))
  )
  rows.add_backbone("random init (initial BN statistics)", random_vars)
  recal_bs = round_to(min(int(config.batch_size), len(data.train_x)), mesh.size)
  recalibrate = lambda: recalibrate_batch_stats(
    rows.backbone,
    random_vars(),
    data.train_x,
    num_batches=int(config.eval.bn_recalibration_batches),
    batch_size=recal_bs,
    seed=int(config.seed),
    mesh=mesh,
  )
  rows.add_backbone("random init (BN recalibrated on train images)", recalibrate)
  rows.add_pixels("raw pixels", lambda x: x)
  if rows.standardised:
    # What the backbone's fixed first step makes of the pixels: a stricter floor (a template
    # match once each image's colours are gone).
    from barlow_jax import models

    standardise = jax.jit(lambda x: models.standardize_images(x, config.model.input_epsilon))
    rows.add_pixels(STANDARDISED_PIXELS, standardise)
  if rows.supervised:
    supervised = lambda: supervised_row(
      config,
      rows.backbone,
      random_vars(),
      (data.train_x, data.train_y),
      (data.test_x, data.test_y),
      data.num_classes,
      pretrain_seconds=pretrain_seconds,
      pretrain_steps=pretrain_steps,
      mesh=mesh,
      features=rows.features,
      should_stop=rows.should_stop,
    )
    rows.add("supervised reference, same backbone", supervised)


FLOOR_MARGIN = 0.05  # Barlow Twins over every floor, on each probe (issue 24, item 1).


def table_targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
  """Targets of the table `rows` (the first is Barlow Twins): margins and whether they are met.

  Two sets, both part of "met":
  - linear top-1 >= 45%, and >= 15 points over the best score (linear or kNN) of the random-init
    rows and of the raw pixels ("linear_targets_met");
  - every floor (each row that is neither Barlow Twins nor the supervised reference: random init
    both ways, raw pixels, standardised pixels) beaten by >= `FLOOR_MARGIN` on linear top-1 and on
    kNN top-1, each probe against the same probe of the floor ("floors", "above_every_floor").
  """
  bt = rows[0]["linear_top1"]
  best = lambda r: max(r["linear_top1"], r["knn_top1"])
  random_rows = [r for r in rows if r["name"].startswith("random init")]
  raw_rows = [r for r in rows if r["name"] == "raw pixels"]
  out: dict[str, Any] = {"barlow_twins_linear_top1": bt, "linear_at_least_45": bt >= 0.45}
  if random_rows:
    out["best_random_init"] = max(best(r) for r in random_rows)
    out["margin_over_random_init"] = bt - out["best_random_init"]
  if raw_rows:
    out["best_raw_pixels"] = best(raw_rows[0])
    out["margin_over_raw_pixels"] = bt - out["best_raw_pixels"]
  margins = [out[k] for k in ("margin_over_random_init", "margin_over_raw_pixels") if k in out]
  old_targets = bool(out["linear_at_least_45"] and margins and min(margins) >= 0.15)
  standardised = [r for r in rows if r["name"] == STANDARDISED_PIXELS]
  if standardised:
    out["best_standardised_pixels"] = best(standardised[0])
    out["margin_over_standardised_pixels"] = bt - out["best_standardised_pixels"]
  floors = [r for r in rows[1:] if not r["name"].startswith("supervised")]
  out["floors"] = {
    r["name"]: {
      "linear_margin": rows[0]["linear_top1"] - r["linear_top1"],
      "knn_margin": rows[0]["knn_top1"] - r["knn_top1"],
    }
    for r in floors
  }
  out["above_every_floor"] = bool(floors) and all(
    min(m.values()) >= FLOOR_MARGIN - 1e-9 for m in out["floors"].values()
  )
  out["linear_targets_met"] = old_targets
  out["met"] = old_targets and out["above_every_floor"]
  return out


def results_markdown(results: Mapping[str, Any]) -> str:
  """The results table (percentages) with its settings, as Markdown."""
  lines = [
    f"Dataset {results['dataset']} ({results['num_train']} train / {results['num_eval']} "
    f"held-out, {results['num_classes']} classes), backbone {results['backbone']}, "
    f"seed {results['seed']}.",
    "",
    "| representation | linear top-1 | linear top-5 | kNN top-1 | dim |",
    "|---|---|---|---|---|",
  ]
  for r in results["rows"]:
    lines.append(
      f"| {r['name']} | {100 * r['linear_top1']:.1f} | {100 * r['linear_top5']:.1f} | "
      f"{100 * r['knn_top1']:.1f} | {r['feature_dim']} |"
    )
  for r in results["rows"]:
    if "supervised_head_top1" in r:
      lines += ["", f"Supervised model's own head: top-1 {100 * r['supervised_head_top1']:.1f}%."]
  lines += _targets_markdown(results.get("targets", {}))
  p = results.get("probe", {})
  extra = []
  if results.get("pretrain_seconds") is not None:
    extra.append(f"pretraining {results['pretrain_seconds']:.0f} s")
  if results.get("pretrain_steps") is not None:
    extra.append(f"{results['pretrain_steps']} steps")
  knn = results["knn"]
  lines += [
    "",
    f"Linear probe: {p.get('protocol')} protocol, {p.get('epochs')} epochs, batch "
    f"{p.get('batch_size')}, lr {p.get('lr')} per 256, wd {p.get('weight_decay')}; kNN k "
    f"{knn['k']}, T {knn['temperature']}"
    + (", features standardised" if knn.get("standardize") else "")
    + (f"; {', '.join(extra)}." if extra else "."),
  ]
  if results.get("backbone_sha256"):
    lines.append(
      f"Computed from the backbone of checkpoint step {results.get('checkpoint_step')} "
      f"(sha256 {results['backbone_sha256'][:12]})."
    )
  return "\n".join(lines) + "\n"


def _targets_markdown(t: Mapping[str, Any]) -> list[str]:
  """The targets under the table: every floor by name with its linear / kNN margin, then the
  linear top-1 targets, then whether all are met (empty without baseline rows)."""
  yes = lambda ok: "yes" if ok else "no"
  lines = []
  if t.get("floors"):
    over = "; ".join(
      f"{name} {100 * m['linear_margin']:+.1f} / {100 * m['knn_margin']:+.1f}"
      for name, m in t["floors"].items()
    )
    lines += [
      "",
      f"Targets: Barlow Twins >= {100 * FLOOR_MARGIN:.0f} points above every floor on linear "
      f"top-1 and on kNN top-1, each against the floor's own; margins linear / kNN in points: "
      f"{over} (all >= {100 * FLOOR_MARGIN:.0f}: {yes(t['above_every_floor'])}).",
    ]
  if "margin_over_random_init" in t:
    margins = [t["margin_over_random_init"], t.get("margin_over_raw_pixels", float("inf"))]
    lines += [
      "",
      f"And Barlow Twins linear top-1 {100 * t['barlow_twins_linear_top1']:.1f}% (>= 45: "
      f"{yes(t['linear_at_least_45'])}), {100 * t['margin_over_random_init']:+.1f} points over "
      f"the best random-init score and "
      f"{100 * t.get('margin_over_raw_pixels', float('nan')):+.1f} over the best raw-pixel score "
      f"(linear or kNN; >= 15 both: {yes(min(margins) >= 0.15)}).",
    ]
  if "met" in t and lines:
    lines += ["", f"All targets met: {yes(t['met'])}."]
  return lines


def write_results(workdir: str, results: Mapping[str, Any], *, text: str | None = None) -> None:
  """Process 0 prints the Markdown table (`text`, or one made from `results`) and writes
  results.json + results.md into workdir.

  Each file is written whole or not at all (a temporary file renamed over it); the JSON first,
  the Markdown view of it last.
  """
  if jax.process_index() != 0:
    return
  if text is None:
    text = results_markdown(results) if "rows" in results else _generic_markdown(results)
  print(text, flush=True)
  checkpointing.path(workdir).mkdir(parents=True, exist_ok=True)
  checkpointing.write_json(os.path.join(workdir, checkpointing.RESULTS_JSON), results)
  checkpointing.write_text(os.path.join(workdir, checkpointing.RESULTS_MD), text)


def _generic_markdown(results: Mapping[str, Any]) -> str:
  lines = ["| metric | value |", "|---|---|"]
  for key, value in results.items():
    if isinstance(value, float):
      lines.append(f"| {key} | {value:.4f} |")
    elif isinstance(value, int | str):
      lines.append(f"| {key} | {value} |")
  return "\n".join(lines) + "\n"

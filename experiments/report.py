"""A collected study as STUDY.json, a Markdown table beside the paper's numbers, and a plot.

Hand-written observations in `RESULTS_DIR/STUDY.notes.md`, if present, are appended to the table.
"""

import math
import os
from collections.abc import Mapping
from typing import Any

from etils import epath

from experiments import workdirs
from experiments.plan import format_value
from experiments.workdirs import REPO_ROOT

DEFAULT_RESULTS_DIR = os.path.join(REPO_ROOT, "experiments", "results")


def default_results_dir(scale: str) -> str:
  """experiments/results for the `local` scale (the committed tables), a subfolder for others."""
  return DEFAULT_RESULTS_DIR if scale == "local" else os.path.join(DEFAULT_RESULTS_DIR, scale)


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


def _table_row(r: Mapping[str, Any]) -> str:
  """One run's row of the study's table."""
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
  return (
    f"| {r['name']} | {_describe(r['overrides'])} | {_pct(r.get('linear_top1'))} | "
    f"{_pct(r.get('knn_top1'))} | {_num(r.get('paper'), '{:.1f}')} | "
    f"{_num(r.get('final_loss'))} | {_num(r.get('corr_diag_mean'), '{:.2f}')} | "
    f"{_num(r.get('representation_rank'), '{:.1f}')} | "
    f"{'; '.join(notes_cell)} |"
  )


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
  lines += [_table_row(r) for r in runs]
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
  paths = {kind: workdirs.join(results_dir, f"{study}.{kind}") for kind in ("json", "md", "png")}
  notes = workdirs.read_text(workdirs.join(results_dir, f"{study}.notes.md")) or ""
  workdirs.write_json(paths["json"], collected)
  epath.Path(paths["md"]).write_text(results_markdown(collected, notes))
  plots.plot_study(collected, paths["png"])
  return paths

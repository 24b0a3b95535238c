"""The figure of a study, in the style of the paper's: bars for categorical ablations, a line with
a log-x axis for a sweep (batch size, projector width, lambda).

Ours (linear and kNN top-1 on the study's dataset) on the left axis; the paper's ImageNet linear
top-1, where it reports one, beside it (its own panel for bars, a second y axis for lines), since
the two are on different datasets and only their shapes compare.
"""

from collections.abc import Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")  # Files only: no display on servers or in CI.
import matplotlib.pyplot as plt  # noqa: E402
from etils import epath  # noqa: E402

_OURS_LINEAR = "#1f77b4"
_OURS_KNN = "#9ecae1"
_PAPER = "#d62728"

_X_LABELS = {
  "batch_size": "batch size",
  "projector_width": "projector dimensionality (every layer)",
  "lambda": "lambda (off-diagonal weight)",
}


def _value(run: Mapping[str, Any], key: str) -> float:
  v = run.get(key)
  return float("nan") if v is None else 100.0 * v


def plot_study(collected: Mapping[str, Any], path: str) -> None:
  """Writes the study's figure (PNG) to `path`.

  Args:
    collected: `experiments.run.collect`'s dict: "study", "scale", "setting", and "runs", each
      with "name", "x" (None for a categorical study), "linear_top1" / "knn_top1" (fractions,
      absent when not run) and "paper" (ImageNet top-1 %, or None).
    path: output file.
  """
  runs = collected["runs"]
  sweep = bool(runs) and all(r.get("x") is not None for r in runs)
  s = collected["setting"]
  steps = f", {s['num_train_steps']} steps" if s.get("num_train_steps", 0) > 0 else ""
  title = (
    f"{collected['study']} — ours: {s['dataset']}{steps}, one seed (scale {collected['scale']})"
  )
  if any(r.get("paper") is not None for r in runs):
    title += "; paper: ImageNet, ResNet-50, 300 epochs"
  if sweep:
    fig = _sweep(collected, runs)
  else:
    fig = _bars(runs)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  with epath.Path(path).open("wb") as f:  # Local or gs://.
    fig.savefig(f, dpi=120, format="png")
  plt.close(fig)


def _bars(runs) -> plt.Figure:
  names = [r["name"] for r in runs]
  has_paper = any(r.get("paper") is not None for r in runs)
  fig, axes = plt.subplots(
    1, 2 if has_paper else 1, figsize=(11 if has_paper else 7, 4.2), squeeze=False
  )
  ax = axes[0, 0]
  pos = list(range(len(runs)))
  width = 0.4
  linear = [_value(r, "linear_top1") for r in runs]
  knn = [_value(r, "knn_top1") for r in runs]
  linear_bars = ax.bar(
    [p - width / 2 for p in pos], linear, width, label="linear top-1", color=_OURS_LINEAR
  )
  knn_bars = ax.bar([p + width / 2 for p in pos], knn, width, label="kNN top-1", color=_OURS_KNN)
  for bars, values in ((linear_bars, linear), (knn_bars, knn)):
    for rect, v in zip(bars, values):
      if v == v:  # Not NaN.
        ax.annotate(
          f"{v:.0f}", (rect.get_x() + rect.get_width() / 2, v), ha="center", va="bottom", fontsize=6
        )
  for p, r in zip(pos, runs):
    if r.get("status") in ("failed", "missing"):
      ax.annotate(r["status"], (p, 1), ha="center", va="bottom", rotation=90, fontsize=7)
  ax.set_xticks(pos, names, rotation=35, ha="right", fontsize=8)
  ax.set_ylabel("top-1 (%)")
  ax.set_ylim(0, 118)
  ax.set_title("ours", fontsize=9)
  ax.legend(fontsize=7, loc="upper center", ncol=2, framealpha=0.95)
  ax.grid(axis="y", alpha=0.3)
  if has_paper:
    ax2 = axes[0, 1]
    paper = [float("nan") if r.get("paper") is None else r["paper"] for r in runs]
    bars = ax2.bar(pos, paper, 0.6, color=_PAPER)
    for rect, v in zip(bars, paper):
      label = "n/a" if v != v else f"{v:.1f}"
      ax2.annotate(
        label,
        (rect.get_x() + rect.get_width() / 2, 0 if v != v else v),
        ha="center",
        va="bottom",
        fontsize=7,
      )
    ax2.set_xticks(pos, names, rotation=35, ha="right", fontsize=8)
    ax2.set_ylim(0, 118)
    ax2.set_title("paper (ImageNet linear top-1)", fontsize=9)
    ax2.grid(axis="y", alpha=0.3)
  return fig


def _sweep(collected, runs) -> plt.Figure:
  runs = sorted(runs, key=lambda r: r["x"])
  xs = [r["x"] for r in runs]
  fig, ax = plt.subplots(figsize=(7, 4.2))
  for key, style, color, label in (
    ("linear_top1", "o-", _OURS_LINEAR, "ours, linear top-1"),
    ("knn_top1", "s--", _OURS_KNN, "ours, kNN top-1"),
  ):
    # Only the measured points, joined (a run not done yet leaves no gap in the line).
    points = [(r["x"], _value(r, key)) for r in runs if _value(r, key) == _value(r, key)]
    ax.plot([p[0] for p in points], [p[1] for p in points], style, color=color, label=label)
  ax.set_xscale("log")
  ax.set_xlim(min(xs) / 1.4, max(xs) * 1.4)
  ax.set_xticks(xs, [f"{x:g}" for x in xs], fontsize=8, rotation=45 if len(xs) > 5 else 0)
  ax.minorticks_off()
  measured = [v for r in runs for v in (_value(r, "linear_top1"), _value(r, "knn_top1")) if v == v]
  if measured:
    ax.set_ylim(max(0.0, min(measured) - 5), min(100.0, max(measured) + 5))
  else:
    ax.set_ylim(0, 100)
  ax.set_xlabel(_X_LABELS.get(collected["study"], "x"))
  ax.set_ylabel(f"top-1 (%), {collected['setting']['dataset']}")
  ax.grid(alpha=0.3)
  lines, labels = ax.get_legend_handles_labels()
  paper = [(r["x"], r["paper"]) for r in runs if r.get("paper") is not None]
  if paper:
    ax2 = ax.twinx()
    ax2.plot(
      [p[0] for p in paper],
      [p[1] for p in paper],
      "^-",
      color=_PAPER,
      label="paper, ImageNet linear top-1",
    )
    ax2.set_ylabel("paper top-1 (%), ImageNet", color=_PAPER)
    more_lines, more_labels = ax2.get_legend_handles_labels()
    lines, labels = lines + more_lines, labels + more_labels
  ax.legend(lines, labels, fontsize=8, loc="lower right")
  return fig

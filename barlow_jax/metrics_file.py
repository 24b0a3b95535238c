"""`WORKDIR/metrics.jsonl`: the run's logged scalars as JSON lines, the one owner of the format.

Each `write_scalars(step, scalars)` of the pretraining loop appends one line

    {"step": 20, "loss": 512.3, "lr_weights": 0.2, ...}

with the names of the TensorBoard scalars (the kNN monitor's `knn_accuracy` on a line of its own).
A resumed run appends to the same file; a step it logs again (it restarted from an earlier
checkpoint) gets a second line, and the later one wins in `read_metrics`. Every line is flushed as
it is written, so a killed run keeps what it logged; a line cut short by the kill is skipped.

Experiments read results with `read_metrics(workdir)` instead of parsing log lines.
"""

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging
from clu.metric_writers import interface

from barlow_jax import checkpointing

FILENAME = "metrics.jsonl"


class JsonlWriter(interface.MetricWriter):
  """A clu `MetricWriter` appending scalars to `workdir/metrics.jsonl` (other kinds ignored).

  Process 0 of a run creates it (the scalars are global: every process holds the same values).
  The file is opened in append mode on the first write, so creating the writer writes nothing.

  Args:
    workdir: the run's directory (local or gs://; it must exist).
  """

  def __init__(self, workdir: str | os.PathLike):
    self.path = checkpointing.path(workdir) / FILENAME
    # Object stores (gs://) have no append: there the whole object is rewritten on each write
    # (a line per log step keeps it small), which also makes every write atomic.
    self._object_store = "://" in os.fspath(self.path)
    self._file = None
    self._text = None

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Appends `{"step": step, name: float(value), ...}` as one line and flushes it."""
    line = {"step": int(step)}
    line.update({str(k): float(np.asarray(v)) for k, v in scalars.items()})
    line = json.dumps(line) + "\n"
    if self._text is None:
      # A run killed mid-line left no newline: start on a fresh line so the next one parses.
      text = self.path.read_text() if self.path.exists() else ""
      self._text = text + "\n" if text and not text.endswith("\n") else text
      if not self._object_store:
        self._file = self.path.open("a")
        self._file.write(self._text[len(text) :])
    if self._object_store:
      self._text += line
      self.path.write_text(self._text)
    else:
      self._file.write(line)
      self._file.flush()

  def write_summaries(self, step, values, metadata=None) -> None:
    del step, values, metadata

  def write_images(self, step, images) -> None:
    del step, images

  def write_videos(self, step, videos) -> None:
    del step, videos

  def write_audios(self, step, audios, *, sample_rate) -> None:
    del step, audios, sample_rate

  def write_texts(self, step, texts) -> None:
    del step, texts

  def write_histograms(self, step, arrays, num_buckets=None) -> None:
    del step, arrays, num_buckets

  def write_hparams(self, hparams) -> None:
    del hparams

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    self._text = None  # A write after close reopens (and re-reads) the file.


def read_metrics(workdir: str | os.PathLike) -> dict[int, dict[str, float]]:
  """The scalars of `workdir/metrics.jsonl` by step: `{step: {name: value, ...}}`.

  The lines of one step are merged; where a name occurs twice for a step (a resumed run logged
  the step again), the later line's value wins. Lines that are not a complete JSON object with a
  `step` (a line cut short when the run was killed) are skipped with a warning. Values are
  floats (NaN / inf as written).

  Returns:
    `{}` when the file does not exist (a run that has not logged yet, or an older workdir).
  """
  source = checkpointing.path(workdir) / FILENAME
  if not source.exists():
    return {}
  out: dict[int, dict[str, float]] = {}
  for number, text in enumerate(source.read_text().splitlines(), 1):
    if not text.strip():
      continue
    try:
      line = json.loads(text)
      step = int(line.pop("step"))
    except (ValueError, KeyError, TypeError, AttributeError):
      logging.warning("%s line %d is incomplete (a killed run?): skipped.", source, number)
      continue
    out.setdefault(step, {}).update({k: float(v) for k, v in line.items()})
  return out

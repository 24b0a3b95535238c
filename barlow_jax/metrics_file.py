"""`WORKDIR/metrics.jsonl`: the run's logged scalars as JSON lines, the one owner of the format.

Each `write_scalars(step, scalars)` of the pretraining loop appends one line

    {"step": 20, "loss": 512.3, "lr_weights": 0.2, ...}

with the names of the TensorBoard scalars (the kNN monitor's `knn_accuracy` on a line of its own).
Every line is flushed as it is written, so a killed run keeps what it logged; a line cut short by
the kill is skipped.

Resumes (TensorBoard's `purge_step`). An invocation that resumes from the checkpoint of step k
first writes `{"purge_step": k}`: `read_metrics` drops every earlier line with a step past k, the
steps of an abandoned invocation that the run redid (or never reached again). A step logged twice
otherwise (two lines of one step) is merged, the later value winning.

Object stores (gs://) have no append, and rewriting one growing object on every write uploads
O(n^2) bytes. There the lines go into numbered objects of at most `LINES_PER_OBJECT` lines,
`metrics.jsonl`, `metrics.jsonl.1`, `metrics.jsonl.2`, ..., each invocation starting a new one;
a write rewrites only the current object (at most `LINES_PER_OBJECT` lines, so bounded bytes per
write, and every write atomic). `read_metrics` reads them in their numeric order. Local files
are appended to: `metrics.jsonl` alone.

Experiments read results with `read_metrics(workdir)` instead of parsing log lines.

The pretraining clock. `PretrainingClock` keeps the run's pretraining wall time in
`WORKDIR/pretraining.json` (`checkpointing.PRETRAINING_JSON`), summed over every invocation of a
resumed run and updated with each checkpoint, so the end-of-run table (`barlow_jax.finish`)
matches the supervised reference to the real pretraining time, not to the seconds of a rerun.
"""

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import logging
from clu.metric_writers import interface

from barlow_jax import checkpointing

FILENAME = "metrics.jsonl"
# Lines per object on object stores: a write uploads at most this many lines (~0.5 KB each).
LINES_PER_OBJECT = 50
_PART = re.compile(re.escape(FILENAME) + r"\.([0-9]+)$")
# Checkpoint steps whose cumulative pretraining time the clock's record keeps (resume points).
_KEEP_STEPS = 8


def _parts(directory) -> list:
  """`metrics.jsonl` (when it exists) and its numbered continuations, in order."""
  numbered = []
  if directory.exists():
    for child in directory.iterdir():
      match = _PART.match(child.name)
      if match:
        numbered.append((int(match.group(1)), child))
  first = [directory / FILENAME] if (directory / FILENAME).exists() else []
  return first + [child for _, child in sorted(numbered, key=lambda x: x[0])]


class JsonlWriter(interface.MetricWriter):
  """A clu `MetricWriter` appending scalars to `workdir/metrics.jsonl` (other kinds ignored).

  Process 0 of a run creates it (the scalars are global: every process holds the same values).
  The file is opened on the first write, so creating the writer writes nothing.

  Args:
    workdir: the run's directory (local or gs://; it must exist).
    purge_step: the checkpoint step this invocation resumed from (0 or None for a new run): its
      first write marks earlier lines past it as abandoned (module docstring).
    object_store: write as on an object store (numbered objects, each rewritten whole); None
      decides from the path (a URL such as gs://... is an object store).
  """

  def __init__(
    self,
    workdir: str | os.PathLike,
    *,
    purge_step: int | None = None,
    object_store: bool | None = None,
  ):
    self.directory = checkpointing.path(workdir)
    self.path = self.directory / FILENAME
    if object_store is None:
      object_store = "://" in os.fspath(self.path)
    self._object_store = object_store
    self._purge_step = int(purge_step) if purge_step else None
    self._file = None
    self._lines: list[str] | None = None  # The current object's lines (object stores).
    self._object = None

  def _open(self) -> None:
    header = json.dumps({"purge_step": self._purge_step}) + "\n" if self._purge_step else ""
    if self._object_store:
      parts = _parts(self.directory)
      if not parts:
        self._object = self.path
      else:
        last = _PART.match(parts[-1].name)
        self._object = self.directory / f"{FILENAME}.{int(last.group(1)) + 1 if last else 1}"
      self._lines = [header] if header else []
      return
    # A run killed mid-line left no newline: start on a fresh line so the next one parses.
    cut = False
    if self.path.exists():
      with self.path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size:
          f.seek(size - 1)
          cut = f.read(1) != b"\n"
    self._file = self.path.open("a")
    self._file.write(("\n" if cut else "") + header)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Appends `{"step": step, name: float(value), ...}` as one line and flushes it."""
    line = {"step": int(step)}
    line.update({str(k): float(np.asarray(v)) for k, v in scalars.items()})
    line = json.dumps(line) + "\n"
    if self._file is None and self._lines is None:
      self._open()
    if self._object_store:
      if len(self._lines) >= LINES_PER_OBJECT:
        number = _PART.match(self._object.name)
        self._object = self.directory / f"{FILENAME}.{int(number.group(1)) + 1 if number else 1}"
        self._lines = []
      self._lines.append(line)
      self._object.write_text("".join(self._lines))
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
    # A write after close reopens: a new object on object stores, no second purge mark.
    self._lines = None
    self._purge_step = None


def read_metrics(workdir: str | os.PathLike) -> dict[int, dict[str, float]]:
  """The scalars of `workdir/metrics.jsonl` (and its continuations): `{step: {name: value}}`.

  The lines of one step are merged; where a name occurs twice for a step (a resumed run logged
  the step again), the later line's value wins. A `{"purge_step": k}` line (a resume from step k)
  drops the steps past k read so far. Lines that are not a complete JSON object with a `step`
  (a line cut short when the run was killed) are skipped with a warning. Values are floats
  (NaN / inf as written).

  Returns:
    `{}` when the file does not exist (a run that has not logged yet, or an older workdir).
  """
  directory = checkpointing.path(workdir)
  out: dict[int, dict[str, float]] = {}
  for source in _parts(directory):
    for number, text in enumerate(source.read_text().splitlines(), 1):
      if not text.strip():
        continue
      try:
        line = json.loads(text)
        if isinstance(line, dict) and "step" not in line and "purge_step" in line:
          purge = int(line["purge_step"])
          out = {step: values for step, values in out.items() if step <= purge}
          continue
        step = int(line.pop("step"))
      except (ValueError, KeyError, TypeError, AttributeError):
        logging.warning("%s line %d is incomplete (a killed run?): skipped.", source, number)
        continue
      out.setdefault(step, {}).update({k: float(v) for k, v in line.items()})
  return out


class PretrainingClock:
  """Pretraining wall time summed over the invocations of a run, kept in `pretraining.json`.

  Args:
    workdir: the run's directory.
    start_step: the step this invocation starts from (0, or the checkpoint it resumed).
  """

  def __init__(self, workdir: str, start_step: int):
    self.path = os.path.join(workdir, checkpointing.PRETRAINING_JSON)
    self.record = checkpointing.read_json(self.path) or {}
    at = self.record.get("seconds_at_step", {})
    # Unknown for a run resumed from a checkpoint the record does not cover (written by an older
    # version, or saved after the record's last update): then the total stays unknown.
    self.base = 0.0 if start_step == 0 else at.get(str(start_step))
    if start_step and self.base is None:
      logging.warning(
        "%s does not cover step %d: the pretraining time of this run will be unknown.",
        self.path,
        start_step,
      )

  @property
  def finished(self) -> bool:
    return bool(self.record.get("finished"))

  def total(self, seconds: float) -> float | None:
    """Pretraining seconds up to now, given this invocation's `seconds` (None: unknown)."""
    return None if self.base is None else self.base + seconds

  def saved(self, step: int, seconds: float, *, total_steps: int, finished: bool = False) -> None:
    """Records checkpoint `step`, reached after `seconds` of this invocation (process 0).

    A finished record is kept as it is for its own or an earlier step (a rerun of a finished run
    trains nothing); a later step (the run was extended) replaces it.
    """
    if jax.process_index() != 0:
      return
    if self.finished and int(step) <= int(self.record.get("step", 0)):
      return
    total = self.total(seconds)
    at = dict(self.record.get("seconds_at_step", {}))
    if total is not None:
      at[str(step)] = round(total, 3)
    keep = sorted(at, key=int)[-_KEEP_STEPS:]
    self.record = {
      "step": int(step),
      "total_steps": int(total_steps),
      "seconds": None if total is None else round(total, 3),
      "seconds_at_step": {k: at[k] for k in keep},
      "devices": jax.device_count(),
      "processes": jax.process_count(),
      "finished": bool(finished),
      "what": "pretraining wall seconds over every invocation (compilation included, kNN "
      "monitor excluded)",
    }
    checkpointing.write_json(self.path, self.record)

"""What a long phase says while it runs: its name, its progress and an ETA; and where it may stop.

The end-of-run evaluation is a list of phases (one per row of its table); `Phases` logs each as it
starts, with the run's ETA from the phases done so far, and `Progress` logs a long loop inside a
phase (the supervised reference's steps) every `every_s` seconds. Both check a stop request
(SIGTERM, through the trainer's preemption flag) at their boundaries and raise `Stopped`, so a
stopped evaluation leaves nothing half-written: the caller writes its files only at the end.
"""

import time
from collections.abc import Callable

from absl import logging


class Stopped(Exception):  # noqa: N818 (a request, not an error)
  """A stop was requested (SIGTERM) at a phase or loop boundary; nothing of it was written."""


def format_duration(seconds: float) -> str:
  """`1h02m03s` / `2m03s` for a duration in seconds (negative counts as 0)."""
  seconds = int(max(seconds, 0))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _never() -> bool:
  return False


class Phases:
  """A known number of phases, logged as `<title> [i/n] <phase> (elapsed ..., ETA ...)`.

  The ETA is the mean time of the phases done so far times the phases left (none before the
  first one ends).
  """

  def __init__(self, title: str, total: int, should_stop: Callable[[], bool] | None = None):
    self.title = title
    self.total = int(total)
    self.should_stop = should_stop or _never
    self.done = 0
    self.start_time = time.perf_counter()

  def check(self) -> None:
    """Raises `Stopped` when a stop was requested."""
    if self.should_stop():
      raise Stopped(f"{self.title}: stopped after {self.done}/{self.total} phases")

  def begin(self, name: str) -> None:
    """Checks for a stop, then logs the phase about to run (call `end` when it is done)."""
    self.check()
    elapsed = time.perf_counter() - self.start_time
    eta = ""
    if self.done:
      eta = f", ETA {format_duration(elapsed / self.done * (self.total - self.done))}"
    logging.info(
      "%s [%d/%d] %s (elapsed %s%s)",
      self.title,
      self.done + 1,
      self.total,
      name,
      format_duration(elapsed),
      eta,
    )

  def end(self) -> None:
    self.done += 1


class Progress:
  """Logs `<name>: step i/n (p%), ETA ...` at most every `every_s` seconds of a loop.

  `update(i)` after step i (1-based) also checks for a stop and raises `Stopped`. The rate (and
  so the ETA) is measured from the first update on, so a first step that compiles does not
  inflate it.
  """

  def __init__(
    self,
    name: str,
    total: int,
    *,
    every_s: float = 10.0,
    should_stop: Callable[[], bool] | None = None,
  ):
    self.name = name
    self.total = int(total)
    self.every_s = float(every_s)
    self.should_stop = should_stop or _never
    self.first: tuple[int, float] | None = None
    self.last_log = time.perf_counter()

  def update(self, done: int) -> None:
    if self.should_stop():
      raise Stopped(f"{self.name}: stopped at step {done}/{self.total}")
    now = time.perf_counter()
    if self.first is None:
      self.first = (done, now)
    if (now - self.last_log < self.every_s or done == self.first[0]) and done < self.total:
      return
    self.last_log = now
    rate = (done - self.first[0]) / max(now - self.first[1], 1e-9)
    logging.info(
      "%s: step %d/%d (%.0f%%), ETA %s",
      self.name,
      done,
      self.total,
      100.0 * done / max(self.total, 1),
      format_duration((self.total - done) / max(rate, 1e-9)),
    )

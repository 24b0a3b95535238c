"""What a long job says while it runs, and where it may stop: progress lines, ETAs, SIGTERM.

The end-of-run evaluation is a list of phases (one per row of its table); `Phases` logs each as it
starts, with the run's ETA from the phases done so far, and `Progress` logs a long loop inside a
phase (the supervised reference's steps) every `every_s` seconds. Both check a stop request at
their boundaries and raise `Stopped`, so a stopped evaluation leaves nothing half-written: the
caller writes its files only at the end.

The stop request: preemptible machines (spot VMs, TPU queues) get SIGTERM some seconds before they
go; a user at a terminal presses Ctrl-C (SIGINT). The trainer installs a `PreemptionFlag` for the
length of a run: either signal only sets the flag, and the loop saves a checkpoint and returns at
the next step boundary (or the final evaluation stops at its next phase), so the same command
resumes the run later. A second Ctrl-C ends the process at once (the default SIGINT action: no
save, exit status -2 / 130 in a shell), for a user who will not wait for the step to finish.
"""

import signal
import sys
import threading
import time
from collections.abc import Callable

import jax
import numpy as np
from absl import logging

# How often (in steps) the processes of a multi-process run agree on whether one got SIGTERM.
SYNC_EVERY_STEPS = 10


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


class PreemptionFlag:
  """Turns SIGTERM and SIGINT (Ctrl-C) into a request to save and stop at the next step boundary.

  Installed as the SIGTERM and SIGINT handler when created on the main thread (signals reach only
  it); `restore()` puts the previous handlers back. After the first SIGINT, SIGINT gets its
  operating-system default back, so a second Ctrl-C ends the process at once, even inside a
  long-running XLA call. In a multi-process run the processes agree every `SYNC_EVERY_STEPS`
  steps (the same steps everywhere), so all of them save the same step.

  Attributes:
    received: True once this process got SIGTERM or SIGINT.
    signal_name: "SIGTERM" or "SIGINT", the first of them received (None before).
  """

  def __init__(self):
    self.received = False
    self.signal_name = None
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handler)

  def _handler(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.SIG_DFL)
      message = (
        "SIGINT (Ctrl-C) received: stopping at the next step (saved) or evaluation phase; "
        "the same command resumes. Press Ctrl-C again to exit at once without saving."
      )
    else:
      message = f"{name} received: stopping at the next step (saved) or evaluation phase."
    logging.warning(message)
    # absl's log may not reach a terminal before the step ends; the user pressed a key now.
    print(message, file=sys.stderr, flush=True)
    if not self.received:
      self.signal_name = name
    self.received = True

  def should_stop(self, step: int) -> bool:
    """Whether the run stops before `step` + 1 (every process gets the same answer).

    Multi-process: a collective on every `SYNC_EVERY_STEPS`-th step, so every process must call
    it at every step.
    """
    if jax.process_count() == 1:
      return self.received
    if step % SYNC_EVERY_STEPS:
      return False
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray(self.received, np.int32))
    return bool(np.any(flags))

  def restore(self) -> None:
    """Puts back the SIGTERM and SIGINT handlers that were installed before this flag."""
    for signum, previous in self._previous.items():
      if previous is not None:
        signal.signal(signum, previous)
    self._previous = {}

"""SIGTERM and Ctrl-C as a request to save and stop at a step boundary, agreed on by every process.

Preemptible machines (spot VMs, TPU queues) get SIGTERM some seconds before they go; a user at a
terminal presses Ctrl-C (SIGINT). The trainer installs a `PreemptionFlag` for the length of a run:
either signal only sets the flag, and the loop saves a checkpoint and returns at the next step
boundary (or the final evaluation stops at its next phase), so the same command resumes the run
later. A second Ctrl-C ends the process at once (the default SIGINT action: no save, exit status
-2 / 130 in a shell), for a user who will not wait for the step to finish.
"""

import signal
import sys
import threading

import jax
import numpy as np
from absl import logging

# How often (in steps) the processes of a multi-process run agree on whether one got SIGTERM.
SYNC_EVERY_STEPS = 10


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

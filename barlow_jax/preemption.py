"""SIGTERM as a request to save and stop at a step boundary, agreed on by every process.

Preemptible machines (spot VMs, TPU queues) get SIGTERM some seconds before they go. The trainer
installs a `PreemptionFlag` for the length of a run: the signal only sets the flag, and the loop
saves a checkpoint and returns at the next step boundary (or the final evaluation stops at its
next phase), so the same command resumes the run later.
"""

import signal
import threading

import jax
import numpy as np
from absl import logging

# How often (in steps) the processes of a multi-process run agree on whether one got SIGTERM.
SYNC_EVERY_STEPS = 10


class PreemptionFlag:
  """Turns SIGTERM into a request to save and stop at the next step boundary.

  Installed as the SIGTERM handler when created on the main thread (signals reach only it);
  `restore()` puts the previous handler back. In a multi-process run the processes agree every
  `SYNC_EVERY_STEPS` steps (the same steps everywhere), so all of them save the same step.

  Attributes:
    received: True once this process got SIGTERM.
  """

  def __init__(self):
    self.received = False
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: stopping at the next step (saved) or evaluation phase.")
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
    """Puts back the SIGTERM handler that was installed before this flag."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

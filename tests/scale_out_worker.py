"""`python -m barlow_jax.main` with a pause hook on the training batches (tests/test_scale_out.py).

Run through the launcher with `--module=scale_out_worker` (tests/ on PYTHONPATH). With
`SCALE_OUT_PAUSE_AT=k`, each process listed in `SCALE_OUT_PAUSE_PROCESSES` ("0,1" by default),
when its input pipeline hands out batch k (a few steps ahead of the update count: the trainer
prefetches), writes `paused.<process index>` into `SCALE_OUT_SYNC_DIR` and waits there until a file
`go` appears (at most 300 s). The test then acts on a run that is known to be mid-way: sends
SIGTERM to the launcher, or SIGKILL to one process. Without the variables this is plain main.
"""

import os
import time

from absl import app

from barlow_jax import data
from barlow_jax import main as barlow_main

_MAX_PAUSE_S = 300.0


def _install_pause() -> None:
  at = int(os.environ.get("SCALE_OUT_PAUSE_AT", "-1"))
  if at < 0:
    return
  sync_dir = os.environ["SCALE_OUT_SYNC_DIR"]
  processes = {int(p) for p in os.environ.get("SCALE_OUT_PAUSE_PROCESSES", "0,1").split(",")}
  original = data.create_pretrain_iterator

  def paused(config, *, start_step=0, **kwargs):
    import jax

    me = jax.process_index()
    for index, batch in enumerate(original(config, start_step=start_step, **kwargs), start_step):
      if index == at and me in processes:
        with open(os.path.join(sync_dir, f"paused.{me}"), "w") as f:
          f.write(str(os.getpid()))
        deadline = time.monotonic() + _MAX_PAUSE_S
        while not os.path.exists(os.path.join(sync_dir, "go")) and time.monotonic() < deadline:
          time.sleep(0.05)
      yield batch

  data.create_pretrain_iterator = paused


if __name__ == "__main__":
  _install_pause()
  app.run(barlow_main.main)

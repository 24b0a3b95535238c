"""The suite's one finished tiny pretraining run (tests/conftest.py's `tiny_run` fixture).

`tests/configs_tiny.py` for 6 steps with a checkpoint every 2 (the last 2 kept) and a log line
every 2, trained in-process on conftest's 8 devices, made once per suite. Tests only read it; a
test that changes a workdir copies it first (`shutil.copytree`).
"""

import dataclasses
import os

import configs_tiny
import jax
import ml_collections

STEPS = 6


def config() -> ml_collections.ConfigDict:
  """The shared run's config: a fresh copy on every call."""
  config = configs_tiny.get_config()
  config.num_train_steps = STEPS
  config.checkpoint_every_steps = 2
  config.keep_checkpoints = 2
  config.log_every_steps = 2
  return config


@dataclasses.dataclass(frozen=True)
class TinyRun:
  """A finished run: its config and its workdir (read it; copy it before changing anything)."""

  config: ml_collections.ConfigDict
  workdir: str

  def restore(self, devices, step: int = STEPS):
    """The run's `train_state.TrainState` at checkpoint `step`, sharded onto a mesh of `devices`."""
    from barlow_jax import checkpointing, data, parallel, train_state

    mesh = parallel.create_mesh(devices)

    def init(rng):
      return train_state.create_train_state(
        self.config,
        rng,
        mesh=mesh,
        steps_per_epoch=data.steps_per_epoch(self.config),
        num_classes=data.num_classes(self.config),
      )

    # Shapes only: a restore needs the structure, not initialised values (and no compilation).
    target = jax.eval_shape(init, jax.random.key(0))
    manager = checkpointing.checkpoint_manager(
      self.workdir, max_to_keep=int(self.config.keep_checkpoints)
    )
    try:
      return train_state.restore_state(manager, target, mesh, step)
    finally:
      manager.close()


def make(workdir: str) -> TinyRun:
  """Trains the shared run into `workdir` (which must not hold a run yet)."""
  from barlow_jax import train

  result = train.train_and_evaluate(config(), workdir)
  assert result.step == STEPS and not result.preempted, result
  assert os.path.isdir(os.path.join(workdir, "backbone"))
  return TinyRun(config(), workdir)

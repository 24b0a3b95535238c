"""Skipping loss spikes: an optax wrapper that refuses an update whose loss or gradient is bad.

Long runs report loss spikes and NaNs in the middle of training (facebookresearch/barlowtwins#53,
facebookresearch/vissl#543); docs/reference.md §7 lists it among the known traps. With
`config.optim.skip_nonfinite` the run's optimizer is wrapped in `skip_spikes`: a step is skipped
when its loss or its gradient norm is not finite, or when its loss exceeds `spike_factor` times the
median of the last `spike_window` accepted losses. A skipped step applies zero updates and keeps
the inner optimizer's state (its momentum and its step count) unchanged; `train_step` also keeps
the batch statistics and the online probe of the step before (`step_skipped`).

The semantics are `optax.apply_if_finite`'s (zero updates, inner state kept, counts of consecutive
and total rejections), extended with the loss and the running median, with one difference: after
too many consecutive rejections `apply_if_finite` accepts the update, whereas here the training
loop stops the run (`config.optim.max_consecutive_skips`), since a step that is rejected again and
again is a diverged run, not a spike.

Under `jit` over a mesh the loss and the gradient are global (replicated scalars), so every device
takes the same decision in the same program.
"""

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from absl import logging


class SpikeGuardState(NamedTuple):
  """State of `skip_spikes`.

  Attributes:
    inner_state: the wrapped optimizer's state (unchanged by a skipped step).
    losses: float32 [window], the last accepted losses (a ring buffer; NaN = empty slot).
    position: int32, the slot the next accepted loss goes to.
    consecutive_skips: int32, skipped steps since the last accepted one.
    skipped_steps: int32, skipped steps in the whole run.
    last_skipped: bool, whether the latest step was skipped.
  """

  inner_state: Any
  losses: jax.Array
  position: jax.Array
  consecutive_skips: jax.Array
  skipped_steps: jax.Array
  last_skipped: jax.Array


def is_bad_step(loss, grad_norm, history, *, spike_factor: float) -> jax.Array:
  """Whether a step with this `loss` and `grad_norm` is to be skipped, given `history`.

  Args:
    loss, grad_norm: float scalars of the step.
    history: float32 [window] of recent accepted losses, NaN where empty.
    spike_factor: k; the spike test is `loss > k * median(history)`, applied once `history` is
      full. 0 turns the spike test off (only non-finite steps are skipped). The test assumes a
      positive loss, as the Barlow Twins loss is (its cross-entropy variant can go negative).

  Returns:
    A bool scalar.
  """
  loss = jnp.asarray(loss, jnp.float32)
  bad = ~jnp.isfinite(loss) | ~jnp.isfinite(jnp.asarray(grad_norm, jnp.float32))
  if spike_factor > 0:
    full = jnp.all(jnp.isfinite(history))
    median = jnp.nanmedian(history)
    bad = bad | (full & (loss > spike_factor * median))
  return bad


def skip_spikes(
  inner: optax.GradientTransformation, *, spike_factor: float, window: int
) -> optax.GradientTransformationExtraArgs:
  """`inner`, skipping the steps `is_bad_step` refuses.

  Args:
    inner: the optimizer to wrap.
    spike_factor: k of the spike test (0 = off: only non-finite steps are skipped).
    window: how many recent accepted losses the running median is taken over (>= 1).

  Returns:
    A transformation whose `update(grads, state, params, *, loss)` needs the step's scalar loss.
    A skipped step returns zero updates and keeps `inner`'s state; read the decision with
    `step_skipped(state)`.
  """
  inner = optax.with_extra_args_support(inner)
  window = int(window)
  if window < 1:
    raise ValueError(f"spike guard window must be >= 1, got {window}.")

  def init(params):
    return SpikeGuardState(
      inner_state=inner.init(params),
      losses=jnp.full((window,), jnp.nan, jnp.float32),
      position=jnp.zeros([], jnp.int32),
      consecutive_skips=jnp.zeros([], jnp.int32),
      skipped_steps=jnp.zeros([], jnp.int32),
      last_skipped=jnp.array(False),
    )

  def update(updates, state, params=None, *, loss, **extra_args):
    skip = is_bad_step(
      loss, optax.global_norm(updates), state.losses, spike_factor=float(spike_factor)
    )

    def accept(_):
      return inner.update(updates, state.inner_state, params, **extra_args)

    def reject(_):
      return optax.tree.zeros_like(updates), state.inner_state

    new_updates, inner_state = jax.lax.cond(skip, reject, accept, None)
    one = jnp.ones([], jnp.int32)
    recorded = state.losses.at[state.position].set(jnp.asarray(loss, jnp.float32))
    return new_updates, SpikeGuardState(
      inner_state=inner_state,
      losses=jnp.where(skip, state.losses, recorded),
      position=jnp.where(skip, state.position, (state.position + 1) % window),
      consecutive_skips=jnp.where(skip, state.consecutive_skips + one, 0),
      skipped_steps=state.skipped_steps + skip.astype(jnp.int32),
      last_skipped=skip,
    )

  return optax.GradientTransformationExtraArgs(init, update)


def step_skipped(state: SpikeGuardState) -> jax.Array:
  """Whether the update that produced `state` was skipped (bool scalar)."""
  return state.last_skipped


def metrics(state: SpikeGuardState) -> dict[str, jax.Array]:
  """float32 scalars `skipped_steps` (the run's total) and `consecutive_skipped_steps`."""
  return {
    "skipped_steps": state.skipped_steps.astype(jnp.float32),
    "consecutive_skipped_steps": state.consecutive_skips.astype(jnp.float32),
  }


def stop_reason(step: int, metrics: Mapping[str, Any], *, max_consecutive_skips: int) -> str:
  """Logs a skipped step; after `max_consecutive_skips` in a row, says why the run stops.

  Args:
    step: the step `metrics` are of. metrics: its host metrics (`loss`, `grad_norm` and those of
      `metrics`). max_consecutive_skips: `config.optim.max_consecutive_skips`.

  Returns:
    "" to go on, else the reason and its fix (the training loop adds the last checkpoint).
  """
  consecutive, loss, grad_norm = (
    int(metrics["consecutive_skipped_steps"]),
    float(metrics["loss"]),
    float(metrics["grad_norm"]),
  )
  if consecutive == 0:
    return ""
  logging.warning(
    "Step %d skipped (loss=%s, grad_norm=%s): parameters and optimizer state kept; %d in a row, "
    "%d in the run.",
    step,
    loss,
    grad_norm,
    consecutive,
    int(metrics["skipped_steps"]),
  )
  if consecutive < max_consecutive_skips:
    return ""
  return (
    f"{consecutive} consecutive steps skipped by the loss-spike guard (steps "
    f"{step - consecutive + 1}..{step}; the last: loss={loss}, grad_norm={grad_norm}), "
    f"config.optim.max_consecutive_skips={max_consecutive_skips}: stopping. The state is that "
    f"of step {step - consecutive}. Lower the learning rate (config.optim.lr_weights / "
    "lr_biases), raise config.optim.spike_factor if the loss moved to a new level, or check the "
    "input data"
  )

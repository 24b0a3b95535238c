"""The reference's LARS and learning-rate schedule, as composable optax transforms.

The released Barlow Twins code (docs/reference.md §3) updates every parameter `p` with its gradient
`g` as

    g += wd * p                        # weights only (ndim != 1)
    q = eta * |p| / |g|  (1 if |p| or |g| is 0)
    g *= q                             # weights only
    mu = momentum * mu + g             # momentum of the *unscaled* update
    p -= lr_t * mu                     # learning rate applied last, per parameter group

Parameters with ndim == 1 (biases, BatchNorm scale and offset) skip weight decay and the trust ratio
and follow their own learning rate (`lr_biases`); the others follow `lr_weights`. Both follow the
same per-step schedule: linear warmup from 0, then a cosine to `end_lr_factor * base`.

`optax.lars` is a different optimizer as soon as the learning rate changes: it multiplies the update
by `lr_t` *before* the momentum, so its buffer holds `sum_k momentum^(t-k) lr_k g_k` where the
reference's holds `sum_k momentum^(t-k) g_k` and scales the whole sum by today's `lr_t`. During
warmup the reference's steps are therefore larger (old gradients are re-weighted by the grown lr).
`lars` below is built from optax's own pieces in the reference's order:

    chain(masked(add_decayed_weights), masked(scale_by_trust_ratio(eta, eps=0)),
          trace(momentum), multi_transform({weights: -lr_weights(t), biases: -lr_biases(t)}))

`optax.scale_by_trust_ratio` with `eps=0` and `min_norm=0` is exactly the reference's `q`
(`eta * |p| / |g|`, 1 when either norm is 0) and `optax.trace(decay, nesterov=False)` is exactly
`mu = decay * mu + g`.
"""

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from barlow_jax import config_validation, spike_guard

OPTIMIZERS = ("lars", "sgd", "adamw", "lamb")
SCHEDULES = ("warmup_cosine", "cosine", "constant")

# Group labels used by `parameter_labels` and `optax.multi_transform`.
WEIGHTS = "weights"
BIASES = "biases"

Schedule = Callable[[Any], jax.Array]


# --------------------------------------------------------------------------------------------------
# Parameter groups.


def _is_bias_or_norm(leaf) -> bool:
  # `len(shape)` rather than `.ndim`: the masks also run on `jax.ShapeDtypeStruct` trees.
  return len(jnp.shape(leaf)) == 1


def parameter_labels(params):
  """Labels every leaf `"biases"` if it has ndim == 1 (biases, BN scale/offset), else `"weights"`.

  Args:
    params: any pytree of arrays (or `jax.ShapeDtypeStruct`s).

  Returns:
    A pytree of the same structure with string leaves, for `optax.multi_transform`.
  """
  return jax.tree.map(lambda p: BIASES if _is_bias_or_norm(p) else WEIGHTS, params)


def weight_mask(params):
  """True for the leaves that get weight decay and the trust ratio (ndim != 1), else False."""
  return jax.tree.map(lambda p: not _is_bias_or_norm(p), params)


# --------------------------------------------------------------------------------------------------
# Learning-rate schedules.


def _float_step(step) -> jax.Array:
  # float64 when jax_enable_x64 is on (the exactness tests), float32 otherwise.
  return jnp.asarray(step, jax.dtypes.canonicalize_dtype(jnp.float64))


def warmup_cosine_schedule(
  base_lr: float, *, warmup_steps: int, total_steps: int, end_lr_factor: float = 0.001
) -> Schedule:
  """The reference's per-step learning rate (its `adjust_learning_rate`).

  For 0-based update index `t` (the first update uses t = 0, so its lr is 0 when warming up):

      t < W:  lr = base * t / W
      t >= W: q = 0.5 * (1 + cos(pi * (t - W) / (T - W)));  lr = base * q + end * base * (1 - q)

  with W = `warmup_steps`, T = `total_steps`, end = `end_lr_factor`. The last update (t = T - 1)
  is one step short of `end * base`, as in the reference. Steps past T stay at `end * base`.
  `warmup_steps=0` is the plain cosine.

  Args:
    base_lr: peak learning rate (already scaled by batch / 256 where that applies).
    warmup_steps: W >= 0 steps of linear warmup, at most `total_steps`.
    total_steps: T >= 1 updates in the whole run.
    end_lr_factor: final lr as a fraction of `base_lr`.

  Returns:
    `schedule(step) -> scalar lr`, traceable (step may be a jax integer array).
  """
  decay_steps = max(total_steps - warmup_steps, 1)  # Unused when the warmup fills the run.

  def schedule(step):
    step = _float_step(step)
    warm = base_lr * step / max(warmup_steps, 1)
    t = jnp.clip(step - warmup_steps, 0, decay_steps)
    # 0.5 * (1 + cos(x)) written as cos(x / 2)^2: the same number without the cancellation that
    # costs float32 its digits near the end of training (x -> pi), where q is ~1e-6.
    q = jnp.square(jnp.cos(0.5 * jnp.pi * t / decay_steps))
    cosine = base_lr * q + end_lr_factor * base_lr * (1.0 - q)
    return jnp.where(step < warmup_steps, warm, cosine)

  return schedule


def warmup_constant_schedule(base_lr: float, *, warmup_steps: int) -> Schedule:
  """Linear warmup from 0 over `warmup_steps` (may be 0), then `base_lr` for ever."""

  def schedule(step):
    step = _float_step(step)
    return jnp.where(step < warmup_steps, base_lr * step / max(warmup_steps, 1), base_lr)

  return schedule


# --------------------------------------------------------------------------------------------------
# Transformations.


def scale_by_group_learning_rates(lr_weights, lr_biases) -> optax.GradientTransformation:
  """Multiplies the update by `-lr_weights(t)` on weights and `-lr_biases(t)` on ndim == 1 leaves.

  Each learning rate is a float or a schedule `fn(step)`; `t` counts the updates (0 first).
  """
  return optax.multi_transform(
    {
      WEIGHTS: optax.scale_by_learning_rate(lr_weights, flip_sign=True),
      BIASES: optax.scale_by_learning_rate(lr_biases, flip_sign=True),
    },
    parameter_labels,
  )


def scale_by_lars(
  *, weight_decay: float = 1e-6, eta: float = 0.001, momentum: float = 0.9
) -> optax.GradientTransformation:
  """The reference LARS direction before the learning rate: the momentum buffer `mu`.

  Weights (ndim != 1): `g + wd * p`, times the trust ratio `eta * |p| / |g + wd * p|` (1 when
  either norm is 0). Biases and BN parameters: `g` unchanged. Then `mu = momentum * mu + g`
  on every leaf. Needs `params` in `update`.
  """
  return optax.chain(
    optax.add_decayed_weights(weight_decay, mask=weight_mask),
    optax.masked(optax.scale_by_trust_ratio(trust_coefficient=eta, eps=0.0), weight_mask),
    optax.trace(decay=momentum, nesterov=False),
  )


def lars(
  lr_weights,
  lr_biases,
  *,
  weight_decay: float = 1e-6,
  eta: float = 0.001,
  momentum: float = 0.9,
) -> optax.GradientTransformation:
  """The reference's LARS: `p -= lr_t * mu` with `mu` from `scale_by_lars`, two lr groups.

  Unlike `optax.lars`, the learning rate multiplies the momentum buffer after accumulation, so it
  matches the reference step for step under a changing learning rate (module docstring).

  Args:
    lr_weights: float or schedule `fn(step)` for leaves with ndim != 1.
    lr_biases: float or schedule for leaves with ndim == 1 (biases, BN scale/offset).
    weight_decay: coupled L2 coefficient, weights only.
    eta: trust coefficient, weights only.
    momentum: decay of the momentum buffer (no dampening, no Nesterov).
  """
  return optax.chain(
    scale_by_lars(weight_decay=weight_decay, eta=eta, momentum=momentum),
    scale_by_group_learning_rates(lr_weights, lr_biases),
  )


def sgd(lr_weights, lr_biases, *, weight_decay: float = 0.0, momentum: float = 0.9):
  """Momentum SGD in torch's form (`mu = m mu + g + wd p`, `p -= lr mu`), decay on weights only."""
  return optax.chain(
    optax.add_decayed_weights(weight_decay, mask=weight_mask),
    optax.trace(decay=momentum, nesterov=False),
    scale_by_group_learning_rates(lr_weights, lr_biases),
  )


def adamw(lr_weights, lr_biases, *, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8):
  """AdamW (decoupled decay, weights only) with the two learning-rate groups."""
  return optax.chain(
    optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
    optax.add_decayed_weights(weight_decay, mask=weight_mask),
    scale_by_group_learning_rates(lr_weights, lr_biases),
  )


def lamb(lr_weights, lr_biases, *, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8):
  """LAMB: Adam direction plus decay, rescaled by `|p| / |update|`; ndim == 1 leaves skip both."""
  return optax.chain(
    optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
    optax.add_decayed_weights(weight_decay, mask=weight_mask),
    optax.masked(optax.scale_by_trust_ratio(), weight_mask),
    scale_by_group_learning_rates(lr_weights, lr_biases),
  )


# --------------------------------------------------------------------------------------------------
# From the config.


def total_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """Updates in the run: `config.num_train_steps` if > 0, else floor(num_epochs * steps/epoch)."""
  _check_steps_per_epoch(steps_per_epoch)
  if config.num_train_steps > 0:
    steps = int(config.num_train_steps)
  else:
    steps = int(math.floor(config.num_epochs * steps_per_epoch))
  if steps < 1:
    raise ValueError(
      f"The run has {steps} training steps (config.num_epochs={config.num_epochs}, "
      f"config.num_train_steps={config.num_train_steps}, steps_per_epoch={steps_per_epoch}); "
      "set config.num_epochs or config.num_train_steps so that there is at least one."
    )
  return steps


def _check_steps_per_epoch(steps_per_epoch) -> None:
  if int(steps_per_epoch) != steps_per_epoch or steps_per_epoch < 1:
    raise ValueError(
      f"steps_per_epoch must be an integer >= 1, got {steps_per_epoch!r}: the dataset has fewer "
      "examples than config.batch_size; lower config.batch_size."
    )


def _check_optim_config(optim: ml_collections.ConfigDict, batch_size: int) -> None:
  if optim.name not in OPTIMIZERS:
    raise ValueError(f"config.optim.name={optim.name!r} is unknown; use one of {OPTIMIZERS}.")
  if optim.schedule not in SCHEDULES:
    raise ValueError(
      f"config.optim.schedule={optim.schedule!r} is unknown; use one of {SCHEDULES}."
    )
  if batch_size < 1:
    raise ValueError(f"config.batch_size must be >= 1, got {batch_size}.")
  config_validation.validate_numbers({"optim": optim}, section="optim")


def create_schedules(
  config: ml_collections.ConfigDict, steps_per_epoch: int
) -> dict[str, Schedule]:
  """`{"lr_weights": fn(step), "lr_biases": fn(step)}`: the learning rate of the update at step t.

  Bases are `config.optim.lr_weights` / `lr_biases`, times `config.batch_size / 256` when
  `config.optim.scale_lr_by_batch`. Shapes by `config.optim.schedule`:

  - `"warmup_cosine"` (reference): linear warmup from 0 over `warmup_epochs * steps_per_epoch`
    steps (rounded to an integer), then cosine to `end_lr_factor * base` at the end of training.
  - `"cosine"`: the cosine over the whole run, no warmup (`warmup_epochs` is not used).
  - `"constant"`: the same warmup (0 epochs for none), then the base lr.
  """
  optim = config.optim
  _check_steps_per_epoch(steps_per_epoch)
  _check_optim_config(optim, config.batch_size)
  total = total_train_steps(config, steps_per_epoch)
  warmup = 0 if optim.schedule == "cosine" else int(round(optim.warmup_epochs * steps_per_epoch))
  if warmup > total:
    raise ValueError(
      f"The warmup ({optim.warmup_epochs} epochs = {warmup} steps, config.optim.warmup_epochs) "
      f"is longer than training ({total} steps); lower config.optim.warmup_epochs or train longer."
    )
  scale = config.batch_size / 256 if optim.scale_lr_by_batch else 1.0
  schedules = {}
  for key in ("lr_weights", "lr_biases"):
    base = float(optim[key]) * scale
    if optim.schedule == "constant":
      schedules[key] = warmup_constant_schedule(base, warmup_steps=warmup)
    else:
      schedules[key] = warmup_cosine_schedule(
        base, warmup_steps=warmup, total_steps=total, end_lr_factor=float(optim.end_lr_factor)
      )
  return schedules


def create_optimizer(
  config: ml_collections.ConfigDict, steps_per_epoch: int
) -> tuple[optax.GradientTransformation, Mapping[str, Schedule]]:
  """The optimizer a run trains with, from `config.optim`, `config.batch_size` and the run length.

  The transformation first multiplies every gradient by `config.optim.gradient_scale`. With the
  default 1.0 the optimizer sees the true gradient of the global-batch loss, which is what a JAX
  data-parallel step computes. The reference all-reduces C without autograd and then averages the
  gradients over its W GPUs, so every gradient it applies is 1/W of the true one (W = 16 in its
  README run): `gradient_scale = 1/W` reproduces its dynamics. LARS's trust ratio cancels the
  scale on the weights except through the weight decay (`wd * p` weighs W times more against the
  scaled gradient), but biases and BN parameters, which have no trust ratio, move W times slower.

  Then `config.optim.name`: `"lars"` (reference), `"sgd"` (momentum, coupled decay), `"adamw"` or
  `"lamb"`. All skip weight decay (and any trust ratio) on leaves with ndim == 1, and give those
  leaves `lr_biases`, the others `lr_weights` (see `create_schedules`).

  Args:
    config: the run config (`barlow_jax.config.base_config()` layout).
    steps_per_epoch: updates per epoch, >= 1.

  Returns:
    `(tx, schedule_fns)`: `tx.update(grads, state, params)` needs `params`, and the step's
    scalar loss as `loss=` when `config.optim.skip_nonfinite` wraps it in
    `spike_guard.skip_spikes`; `schedule_fns` maps `"lr_weights"` / `"lr_biases"` to
    `fn(step) -> lr` for the update at 0-based step `step` (already scaled by batch / 256).

  Raises:
    ValueError: unknown optimizer or schedule name, a negative learning rate or decay, a warmup
      longer than training, `steps_per_epoch < 1`, or another out-of-range `config.optim` value.
  """
  optim = config.optim
  schedules = create_schedules(config, steps_per_epoch)
  lr_w, lr_b = schedules["lr_weights"], schedules["lr_biases"]
  if optim.name == "lars":
    inner = lars(
      lr_w, lr_b, weight_decay=optim.weight_decay, eta=optim.eta, momentum=optim.momentum
    )
  elif optim.name == "sgd":
    inner = sgd(lr_w, lr_b, weight_decay=optim.weight_decay, momentum=optim.momentum)
  else:
    builder = adamw if optim.name == "adamw" else lamb
    inner = builder(
      lr_w, lr_b, weight_decay=optim.weight_decay, b1=optim.b1, b2=optim.b2, eps=optim.adam_eps
    )
  tx = optax.chain(optax.scale(float(optim.gradient_scale)), inner)
  if optim.get("skip_nonfinite", False):
    tx = spike_guard.skip_spikes(
      tx, spike_factor=float(optim.spike_factor), window=int(optim.spike_window)
    )
  return tx, schedules

"""Fine-tuning backbone + a linear head: semi-supervised evaluation and the supervised reference.

Also the labelled subsets (`select_subset`) and the on-device crop + flip of in-memory batches.
"""

import functools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh

from barlow_jax import models, parallel
from barlow_jax._deprecations import deprecation_getattr
from barlow_jax.evaluation.features import (
  accuracy_over_batches,
  backbone_variables,
  topk_counts,
)
from barlow_jax.evaluation.linear_probe import (
  cosine_to_zero,
  torch_sgd,
)

# Steps timed to size a time-matched fine-tuning run.
_TIMED_STEPS = 10


def select_subset(
  labels,
  *,
  fraction: float | None = None,
  num_examples: int | None = None,
  seed: int = 0,
  balanced: bool = True,
  exclude=None,
) -> np.ndarray:
  """Deterministic labelled subset of a pool, for semi-supervised fine-tuning.

  Args:
    labels: [N] int labels of the pool (e.g. the training split).
    fraction: share of the pool to take (0, 1]; or give `num_examples` instead.
    seed: the same seed and pool always give the same subset.
    balanced: the same count per class (classes present in the pool; the remainder of the total
      goes to classes chosen by the seed; a class with too few examples gives all it has).
      Otherwise a uniform random sample.
    exclude: indices of the pool that must never be chosen (e.g. examples held out for eval when
      the eval split is carved from the same pool).

  Returns:
    Sorted int64 indices into the pool, disjoint from `exclude`.
  """
  labels = np.asarray(labels).reshape(-1)
  n = len(labels)
  if (fraction is None) == (num_examples is None):
    raise ValueError("give exactly one of fraction (e.g. 0.01) or num_examples")
  if fraction is not None:
    if not 0.0 < fraction <= 1.0:
      raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    num_examples = max(1, int(round(fraction * n)))
  available = np.ones(n, bool)
  if exclude is not None:
    available[np.asarray(exclude, np.int64)] = False
  pool = np.flatnonzero(available)
  if not 1 <= num_examples <= len(pool):
    raise ValueError(f"num_examples must be in [1, {len(pool)}] (available), got {num_examples}")
  rng = np.random.default_rng(seed)
  if not balanced:
    return np.sort(rng.choice(pool, size=num_examples, replace=False))
  classes = np.unique(labels[pool])
  per_class = {c: rng.permutation(pool[labels[pool] == c]) for c in classes}
  quota = {c: num_examples // len(classes) for c in classes}
  for c in rng.permutation(classes)[: num_examples % len(classes)]:
    quota[c] += 1
  chosen = [per_class[c][: quota[c]] for c in classes]
  return np.sort(np.concatenate(chosen)).astype(np.int64)


def random_crop_flip(
  key: jax.Array,
  images: jax.Array,
  *,
  area: tuple[float, float] = (0.08, 1.0),
  aspect: tuple[float, float] = (3 / 4, 4 / 3),
  flip_prob: float = 0.5,
) -> jax.Array:
  """Random resized crop (back to the input size, bilinear) + horizontal flip, per image.

  For in-memory datasets whose batches never pass through tf.data. A crop whose sampled side
  exceeds the image is clipped to the image (torchvision retries instead; rare for the aspect
  range used).

  Args:
    images: [N, H, W, C] float. area: crop area as a fraction of the image. aspect: w / h range.

  Returns:
    [N, H, W, C] float32.
  """
  n, h, w, c = images.shape
  k_area, k_aspect, k_y, k_x, k_flip = jax.random.split(key, 5)
  scale = jax.random.uniform(k_area, (n,), minval=area[0], maxval=area[1])
  ratio = jnp.exp(
    jax.random.uniform(k_aspect, (n,), minval=math.log(aspect[0]), maxval=math.log(aspect[1]))
  )
  crop_w = jnp.clip(jnp.sqrt(scale * ratio) * w, 1.0, w)
  crop_h = jnp.clip(jnp.sqrt(scale / ratio) * h, 1.0, h)
  y0 = jax.random.uniform(k_y, (n,)) * (h - crop_h)
  x0 = jax.random.uniform(k_x, (n,)) * (w - crop_w)

  def one(image, ch, cw, y, x):
    # Output pixel o samples input (o - t) / s: t = -offset * s maps [0, H) onto the crop.
    s = jnp.stack([h / ch, w / cw])
    return jax.image.scale_and_translate(
      image.astype(jnp.float32), (h, w, c), (0, 1), s, -jnp.stack([y, x]) * s, "linear"
    )

  out = jax.vmap(one)(images, crop_h, crop_w, y0, x0)
  flip = jax.random.uniform(k_flip, (n,)) < flip_prob
  return jnp.where(flip[:, None, None, None], out[:, :, ::-1], out)


def crop_flip_kwargs(view: ml_collections.ConfigDict) -> dict[str, Any]:
  """`random_crop_flip`'s keywords from a view of `config.augment` (crop area / aspect, flip)."""
  return {
    "area": tuple(view.crop_area),
    "aspect": tuple(view.crop_aspect),
    "flip_prob": float(view.flip_prob),
  }


# Long by its signature and docstring; the body is the steps' loop (its parts are helpers below).
def finetune(
  backbone: nn.Module,
  variables: Mapping[str, Any],
  batches: Iterator[Mapping[str, np.ndarray]],
  *,
  num_classes: int,
  num_steps: int,
  batch_size: int,
  lr_backbone: float = 0.005,
  lr_head: float = 0.5,
  momentum: float = 0.9,
  weight_decay: float = 0.0,
  optimizer: Callable[[int], optax.GradientTransformation] | None = None,
  augment: Mapping[str, Any] | None = None,
  time_budget_s: float | None = None,
  seed: int = 0,
  mesh: Mesh | None = None,
  on_step: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
  """Trains backbone + a new linear head with cross-entropy, train-mode BatchNorm.

  SGD (torch semantics) with two learning rates, each `lr * batch_size / 256` with a per-step
  cosine to 0; weight decay on weights only (ndim > 1). The reference semi-supervised protocol is
  lr_backbone 0.005, lr_head 0.5, weight decay 0, 20 epochs.

  Args:
    backbone, variables: the starting point (`{"params", "batch_stats"}` of the backbone).
    batches: infinite iterator of {"image": [B, S, S, 3], "label": [B]} (B = global batch, or the
      process-local part of it on several hosts).
    optimizer: if given, `optimizer(num_steps)` is the transformation used instead of the
      two-learning-rate SGD above (lr_backbone, lr_head, momentum, weight_decay are then unused).
    augment: None (batches come augmented) or {"area", "aspect", "flip_prob"} for
      `random_crop_flip` applied on the devices.
    time_budget_s: if set, `num_steps` is replaced by the number of steps that fit this many
      seconds, measured on a few steps after compilation (the schedule then spans those steps).
    on_step: called as `on_step(done, num_steps)` after each step (progress, stop requests).

  Returns:
    (Classifier variables {"params": {"backbone", "head"}, "batch_stats": {"backbone"}},
     {"steps", "seconds", "final_loss"}).
  """
  mesh = parallel.create_mesh() if mesh is None else mesh
  if batch_size % mesh.size:
    raise ValueError(f"batch_size {batch_size} must divide by the {mesh.size} devices")
  model = models.Classifier(backbone=backbone, num_classes=num_classes)
  first = next(batches)
  params, stats = _start_variables(model, variables, first["image"], seed)
  if optimizer is None:
    optimizer = functools.partial(
      two_rate_sgd,
      params,
      batch_size=batch_size,
      lr_backbone=lr_backbone,
      lr_head=lr_head,
      momentum=momentum,
      weight_decay=weight_decay,
    )

  key = jax.random.PRNGKey(seed + 1)
  params, stats = parallel.put_replicated(params, mesh), parallel.put_replicated(stats, mesh)
  if time_budget_s is not None:
    logging.info(
      "Fine-tuning: compiling and timing %d steps to fit the %.0f s budget.",
      _TIMED_STEPS,
      time_budget_s,
    )
    tx = optimizer(max(num_steps, 1))
    state = (params, stats, tx.init(params))
    per_step = _seconds_per_step(
      _classifier_step(model, tx, augment), state, _labelled_arrays(first, mesh), key
    )
    num_steps = max(1, int(time_budget_s / per_step))
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  tx = optimizer(num_steps)
  step = _classifier_step(model, tx, augment)
  opt_state = tx.init(params)
  t0 = time.perf_counter()
  batch = first
  loss = jnp.zeros(())
  for i in range(num_steps):
    if i > 0:
      batch = next(batches)
    params, stats, opt_state, loss = step(
      params, stats, opt_state, _labelled_arrays(batch, mesh), jax.random.fold_in(key, i)
    )
    if on_step is not None:
      on_step(i + 1, num_steps)
  loss = float(loss)
  info = {"steps": num_steps, "seconds": time.perf_counter() - t0, "final_loss": loss}
  return {"params": params, "batch_stats": stats}, info


def _labelled_arrays(batch, mesh: Mesh):
  """{"image" float32, "label" int32} of a host batch, sharded over `mesh`."""
  arrays = {
    "image": np.asarray(batch["image"], np.float32),
    "label": np.asarray(batch["label"]).astype(np.int32),
  }
  return parallel.shard_batch(arrays, mesh)


def _start_variables(model: models.Classifier, variables, image, seed: int):
  """(params {"backbone", "head"}, batch_stats {"backbone"}): the backbone's, a new head."""
  start = backbone_variables(variables)
  head = jax.jit(functools.partial(model.init, train=False))(
    jax.random.PRNGKey(seed), jnp.asarray(image[:1], jnp.float32)
  )
  params = {"backbone": start["params"], "head": head["params"]["head"]}
  return params, {"backbone": start["batch_stats"]}


def two_rate_sgd(
  params,
  num_steps: int,
  *,
  batch_size: int,
  lr_backbone: float,
  lr_head: float,
  momentum: float,
  weight_decay: float,
) -> optax.GradientTransformation:
  """`finetune`'s default optimizer for Classifier `params` {"backbone", "head"} over num_steps.

  SGD (torch semantics) with `lr * batch_size / 256` per part, each with a per-step cosine to 0;
  weight decay on weights only (ndim > 1).
  """

  part = lambda lr: torch_sgd(cosine_to_zero(lr * batch_size / 256, num_steps), momentum, 0.0)

  decay = optax.add_decayed_weights(
    weight_decay, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
  )
  labels = {"backbone": jax.tree.map(lambda _: "backbone", params["backbone"]), "head": {}}
  labels["head"] = jax.tree.map(lambda _: "head", params["head"])
  return optax.chain(
    decay, optax.multi_transform({"backbone": part(lr_backbone), "head": part(lr_head)}, labels)
  )


def _classifier_step(model: models.Classifier, tx: optax.GradientTransformation, augment):
  """The jitted step `(params, stats, opt_state, batch, key) -> (..., loss)`: cross-entropy,
  train-mode BatchNorm, `random_crop_flip(**augment)` on the devices unless augment is None."""

  @jax.jit
  def step(params, stats, opt_state, batch, key):
    images = batch["image"]
    if augment is not None:
      images = random_crop_flip(key, images, **augment)

    def loss_fn(p):
      logits, new = model.apply(
        {"params": p, "batch_stats": stats}, images, train=True, mutable=["batch_stats"]
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
      return loss, new["batch_stats"]

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss

  return step


def _seconds_per_step(step, state, batch, key) -> float:
  """Seconds per call of `step` on `state` = (params, stats, opt_state), after compilation."""
  # A throwaway run. Two warm-up calls: the first compiles for host inputs, the second for the
  # device-resident outputs it feeds back.
  p, s, o = state
  for _ in range(2):
    p, s, o, loss = step(p, s, o, batch, key)
  jax.block_until_ready(loss)
  t0 = time.perf_counter()
  for _ in range(_TIMED_STEPS):
    p, s, o, loss = step(p, s, o, batch, key)
  jax.block_until_ready(loss)
  return (time.perf_counter() - t0) / _TIMED_STEPS


def random_batches(
  images: np.ndarray, labels: np.ndarray, batch_size: int, *, seed: int
) -> Iterator[dict[str, np.ndarray]]:
  """Infinite shuffled training batches over in-memory arrays (reshuffled every epoch)."""
  rng = np.random.default_rng(seed)
  n = len(images)
  if n < batch_size:
    raise ValueError(f"batch_size {batch_size} exceeds the {n} training examples")
  while True:
    perm = rng.permutation(n)
    for i in range(n // batch_size):
      idx = perm[i * batch_size : (i + 1) * batch_size]
      yield {"image": images[idx], "label": labels[idx]}


def classifier_accuracy(
  model: models.Classifier,
  variables: Mapping[str, Any],
  batches: Iterable[Mapping[str, np.ndarray]],
  *,
  mesh: Mesh | None = None,
) -> dict[str, float]:
  """Top-1 / top-5 of a Classifier (eval-mode BN) over one pass of masked eval batches."""
  mesh = parallel.create_mesh() if mesh is None else mesh
  variables = parallel.put_replicated(variables, mesh)

  @jax.jit
  def counts(variables, batch):
    logits = model.apply(variables, batch["image"], train=False)
    return topk_counts(logits, batch["label"], batch["mask"])

  counts_fn = functools.partial(counts, variables)
  return accuracy_over_batches(counts_fn, batches, mesh=mesh, what="classifier_accuracy")


# Old names of this module, now in their own homes: each warns DeprecationWarning naming it.
_DEPRECATED = {"Classifier": "barlow_jax.models.Classifier"}

__getattr__ = deprecation_getattr(__name__, _DEPRECATED)

"""Linear probe of a frozen backbone, both protocols (see `barlow_jax.evaluate`).

- "features": `train_linear_probe` / `linear_probe_accuracy` on pre-extracted, standardised
  features (the backbone runs once).
- "reference": `reference_linear_probe`, the published protocol, streaming re-augmented images
  through the frozen backbone every epoch.
"""

import dataclasses
import functools
import time
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from barlow_jax import models, optim, parallel
from barlow_jax._deprecations import deprecation_getattr
from barlow_jax.evaluation.features import (
  accuracy_over_batches,
  backbone_variables,
  topk_accuracy,
  topk_counts,
)


@dataclasses.dataclass(frozen=True)
class LinearProbe:
  """A trained linear classifier on (optionally standardised) features.

  kernel: [D, C], bias: [C], mean / std: [D] (zeros / ones when not standardised).
  """

  kernel: jax.Array
  bias: jax.Array
  mean: jax.Array
  std: jax.Array

  def logits(self, features) -> jax.Array:
    """[N, D] features -> [N, C] logits."""
    x = (jnp.asarray(features, jnp.float32) - self.mean) / self.std
    return x @ self.kernel + self.bias


def cosine_to_zero(base_lr: float, total_steps: int) -> optim.Schedule:
  """The probes' per-step cosine from `base_lr` to 0 over `total_steps` (no warmup): optim's."""
  return optim.warmup_cosine_schedule(
    base_lr, warmup_steps=0, total_steps=total_steps, end_lr_factor=0.0
  )


def torch_sgd(lr_schedule, momentum: float, weight_decay) -> optax.GradientTransformation:
  """torch.optim.SGD (momentum, L2 weight decay on every parameter) in optax."""
  # torch.optim.SGD: g += wd * p (every parameter), buf = m * buf + g, p -= lr * buf.
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(lr_schedule, momentum))


def linear_head_init(key: jax.Array, dim: int, num_classes: int) -> dict[str, jax.Array]:
  """A new linear head on `dim`-wide features: the one initialisation of every linear head.

  Args:
    key: PRNG key for the kernel.
    dim: feature width D (int).
    num_classes: number of classes C (int).

  Returns:
    {"kernel": [D, C] float32 ~ N(0, 0.01^2), "bias": [C] float32 zeros}; logits are
    `features @ kernel + bias`. Used by the linear probes here, the online probe in training and
    (as `models.linear_head_kernel_init`, same numbers for the same key) the fine-tuning
    `models.Classifier`.
    Reference evaluate.py: `fc.weight.data.normal_(mean=0.0, std=0.01)`, `fc.bias.data.zero_()`.
  """
  return {
    "kernel": models.linear_head_kernel_init(key, (dim, num_classes), jnp.float32),
    "bias": jnp.zeros((num_classes,), jnp.float32),
  }


@functools.partial(jax.jit, static_argnames=("num_classes", "epochs", "batch_size"))
def _fit_linear(
  features, labels, key, lr, momentum, weight_decay, *, num_classes, epochs, batch_size
):
  n, d = features.shape
  steps_per_epoch = n // batch_size
  total = epochs * steps_per_epoch
  tx = torch_sgd(cosine_to_zero(lr, total), momentum, weight_decay)
  init_key, key = jax.random.split(key)
  params = linear_head_init(init_key, d, num_classes)

  def loss_fn(p, x, y):
    logits = x @ p["kernel"] + p["bias"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def step(carry, idx):
    p, s = carry
    grads = jax.grad(loss_fn)(p, features[idx], labels[idx])
    updates, s = tx.update(grads, s, p)
    return (optax.apply_updates(p, updates), s), None

  def epoch(e, carry):
    perm = jax.random.permutation(jax.random.fold_in(key, e), n)
    idx = perm[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)
    return jax.lax.scan(step, carry, idx)[0]

  params, _ = jax.lax.fori_loop(0, epochs, epoch, (params, tx.init(params)))
  return params


def train_linear_probe(
  train_features,
  train_labels,
  *,
  num_classes: int,
  epochs: int = 100,
  batch_size: int = 256,
  lr: float = 0.3,
  momentum: float = 0.9,
  weight_decay: float = 1e-6,
  standardize: bool = True,
  seed: int = 0,
) -> LinearProbe:
  """Trains one linear layer on fixed features with the reference probe's optimizer.

  SGD with momentum (torch semantics), weight decay on weights and bias, lr `lr * batch / 256`
  with a per-step cosine to 0, weights N(0, 0.01), bias 0, softmax cross-entropy, reshuffled
  every epoch (remainder dropped; the batch shrinks to N when N < batch_size).

  Args:
    train_features: [N, D] float. train_labels: [N] int in [0, num_classes).
    standardize: subtract the training mean and divide by the training std per feature (the
      "features" protocol; puts raw pixels and ReLU features on one scale for one lr).

  Returns:
    The LinearProbe (its `logits` applies the same standardisation).
  """
  x = np.asarray(train_features, np.float32)
  y = np.asarray(train_labels).astype(np.int32)
  if x.ndim != 2 or y.shape != (x.shape[0],):
    raise ValueError(
      f"train_features must be [N, D] and train_labels [N], got {x.shape}, {y.shape}"
    )
  if epochs < 1 or batch_size < 1:
    raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
  if y.min() < 0 or y.max() >= num_classes:
    raise ValueError(
      f"labels must lie in [0, num_classes={num_classes}), got [{y.min()}, {y.max()}]"
    )
  if standardize:
    mean = x.mean(axis=0)
    std = x.std(axis=0) + 1e-6
  else:
    mean = np.zeros(x.shape[1], np.float32)
    std = np.ones(x.shape[1], np.float32)
  batch_size = min(batch_size, len(x))
  params = _fit_linear(
    jnp.asarray((x - mean) / std),
    jnp.asarray(y),
    jax.random.PRNGKey(seed),
    jnp.float32(lr * batch_size / 256),
    jnp.float32(momentum),
    jnp.float32(weight_decay),
    num_classes=num_classes,
    epochs=epochs,
    batch_size=batch_size,
  )
  return LinearProbe(params["kernel"], params["bias"], jnp.asarray(mean), jnp.asarray(std))


def linear_probe_accuracy(
  train_features, train_labels, test_features, test_labels, *, num_classes: int, **probe_kwargs
) -> dict[str, float]:
  """Trains `train_linear_probe` and returns {"top1", "top5", "train_top1"} in [0, 1]."""
  probe = train_linear_probe(train_features, train_labels, num_classes=num_classes, **probe_kwargs)
  test_logits = probe.logits(test_features)
  test_labels = jnp.asarray(np.asarray(test_labels).astype(np.int32))
  return {
    "top1": float(topk_accuracy(test_logits, test_labels, 1)),
    "top5": float(topk_accuracy(test_logits, test_labels, min(5, num_classes))),
    "train_top1": float(
      topk_accuracy(probe.logits(train_features), jnp.asarray(np.asarray(train_labels)), 1)
    ),
  }


def probe_kwargs_from_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The linear-probe settings of `config.eval` as keyword arguments of `train_linear_probe`."""
  return dict(
    epochs=int(config.eval.probe_epochs),
    batch_size=int(config.eval.probe_batch_size),
    lr=float(config.eval.probe_lr),
    momentum=float(config.eval.probe_momentum),
    weight_decay=float(config.eval.probe_weight_decay),
    seed=int(config.seed),
  )


def reference_linear_probe(
  config: ml_collections.ConfigDict,
  backbone: nn.Module,
  variables: Mapping[str, Any],
  *,
  num_classes: int,
  mesh: Mesh | None = None,
) -> dict[str, float]:
  """The published linear protocol on a frozen backbone (eval-mode BN), streaming the data.

  Each epoch re-augments `config.dataset.probe_split` (random resized crop + flip), the frozen
  backbone gives features, one linear layer (N(0, 0.01) weights, bias 0) trains with SGD
  momentum `config.eval.probe_momentum`, lr `probe_lr * batch / 256`, wd `probe_weight_decay`,
  per-step cosine, for `probe_epochs`; top-1 / top-5 on `config.dataset.eval_split` (resize +
  centre crop). The backbone's variables are never updated.

  Returns:
    {"top1", "top5", "steps", "seconds"}.
  """
  from barlow_jax import data

  mesh = parallel.create_mesh() if mesh is None else mesh
  frozen = parallel.put_replicated(backbone_variables(variables), mesh)
  head, steps, seconds = _train_reference_head(config, backbone, frozen, num_classes, mesh)

  @jax.jit
  def counts(head, frozen, batch):
    feats = backbone.apply(frozen, batch["image"], train=False).astype(jnp.float32)
    return topk_counts(feats @ head["kernel"] + head["bias"], batch["label"], batch["mask"])

  eval_batches = data.create_eval_iterator(
    config, config.dataset.eval_split, batch_size=int(config.eval.probe_batch_size)
  )
  counts_fn = functools.partial(counts, head, frozen)
  accuracy = accuracy_over_batches(
    counts_fn, eval_batches, mesh=mesh, what="reference_linear_probe"
  )
  return {**accuracy, "steps": steps, "seconds": seconds}


def reference_head_step(backbone: nn.Module, tx: optax.GradientTransformation):
  """The reference linear protocol's jitted update of the head on a frozen backbone.

  `step(head, opt_state, frozen, batch) -> (head, opt_state, loss)`: `frozen` the backbone's
  `{"params", "batch_stats"}` (eval-mode BatchNorm, no gradient), `batch` `{"image": [B, S, S, 3]
  float32, "label": [B] int32}` (sharded over the mesh), `loss` the float32 mean cross-entropy.
  """

  @jax.jit
  def step(head, opt_state, frozen, batch):
    feats = jax.lax.stop_gradient(backbone.apply(frozen, batch["image"], train=False))
    feats = feats.astype(jnp.float32)

    def loss_fn(h):
      logits = feats @ h["kernel"] + h["bias"]
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

    loss, grads = jax.value_and_grad(loss_fn)(head)
    updates, opt_state = tx.update(grads, opt_state, head)
    return optax.apply_updates(head, updates), opt_state, loss

  return step


def _train_reference_head(config, backbone, frozen, num_classes: int, mesh: Mesh):
  """(head, steps, seconds): the reference protocol's training of the linear head."""
  from barlow_jax import data, preflight

  # Whole batches of the probe split: a smaller split is refused naming the probe's batch key
  # (steps_per_epoch of the derived config would name config.batch_size).
  reader = "the reference linear probe (config.eval.probe_protocol)"
  need = preflight.Need("probe_split", reader, batch_key="eval.probe_batch_size")
  preflight.check(config, [need])
  batch_size = int(config.eval.probe_batch_size)
  train_config = data.crop_flip_config(
    config, split=config.dataset.probe_split, batch_size=batch_size
  )
  total = int(config.eval.probe_epochs) * data.steps_per_epoch(train_config)
  rate = float(config.eval.probe_lr) * batch_size / 256
  tx = torch_sgd(
    cosine_to_zero(rate, total),
    float(config.eval.probe_momentum),
    float(config.eval.probe_weight_decay),
  )
  size = int(config.dataset.image_size)
  dim = backbone.apply(frozen, jnp.zeros((1, size, size, 3)), train=False).shape[-1]
  head = linear_head_init(jax.random.PRNGKey(config.seed), dim, num_classes)
  head = parallel.put_replicated(head, mesh)
  opt_state = tx.init(head)
  step = reference_head_step(backbone, tx)
  t0 = time.perf_counter()
  batches = data.labelled_view_a(data.create_pretrain_iterator(train_config), train_config)
  for _ in range(total):
    b = next(batches)
    arrays = {
      "image": np.asarray(b["image"], np.float32),
      "label": np.asarray(b["label"], np.int32),
    }
    head, opt_state, _ = step(head, opt_state, frozen, parallel.shard_batch(arrays, mesh))
  return head, total, time.perf_counter() - t0


# Old names of this module, now in their own homes: each warns DeprecationWarning naming it.
_DEPRECATED = {
  "crop_flip_config": "barlow_jax.data.pretrain.crop_flip_config",
  "labelled_view_a": "barlow_jax.data.pretrain.labelled_view_a",
  "linear_head_kernel_init": "barlow_jax.models.linear_head_kernel_init",
}

__getattr__ = deprecation_getattr(__name__, _DEPRECATED)

"""Classification metrics shared by the evaluation protocols."""

import jax
import jax.numpy as jnp


def topk_accuracy(logits: jax.Array, labels: jax.Array, k: int, mask: jax.Array | None = None):
  """Fraction of examples whose label is among the k largest logits.

  Args:
    logits: [N, C] scores.
    labels: [N] int class ids in [0, C).
    k: 1 <= k <= C.
    mask: optional [N] bool; False rows (padding) are ignored.

  Returns:
    A float32 scalar in [0, 1] (0 when every row is masked).
  """
  logits = jnp.asarray(logits)
  labels = jnp.asarray(labels)
  if logits.ndim != 2 or labels.shape != logits.shape[:1]:
    raise ValueError(f"logits must be [N, C] and labels [N], got {logits.shape}, {labels.shape}")
  if not 1 <= k <= logits.shape[1]:
    raise ValueError(f"k must be in [1, {logits.shape[1]}] (number of classes), got {k}")
  _, top = jax.lax.top_k(logits, k)
  hit = jnp.any(top == labels[:, None], axis=1).astype(jnp.float32)
  if mask is None:
    return jnp.mean(hit)
  mask = jnp.asarray(mask, jnp.float32)
  return jnp.sum(hit * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def topk_counts(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
  """[3] float32 (top-1 hits, top-5 hits, examples) of the unmasked rows of one batch.

  Top-5 is top-C when there are fewer than 5 classes. Summed over batches, hits / examples are
  the accuracies (`barlow_jax.evaluation.features.accuracy_over_batches`).
  """
  n = jnp.sum(jnp.asarray(mask).astype(jnp.float32))
  k5 = min(5, jnp.shape(logits)[-1])
  top1 = topk_accuracy(logits, labels, 1, mask) * n
  top5 = topk_accuracy(logits, labels, k5, mask) * n
  return jnp.stack([top1, top5, n])

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

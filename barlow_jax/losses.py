"""The Barlow Twins loss (docs/reference.md §1), its paper ablations, and three ways to compute it.

    loss = barlow_twins_loss(z_a, z_b)                       # whole batch on one device, or
    loss = barlow_twins_loss(z_a, z_b, axis_name="data")     # per-device shard in shard_map/pmap

Embeddings `z_a`, `z_b` are `[N, D]`. Each view is normalised along the batch axis with the
**global** batch statistics (mean 0, biased variance, `eps` inside the square root, as an
affine-free BatchNorm), then `C = A^T B / N_global` and

    invariance = sum_i (1 - C_ii)^2          redundancy = sum_{i != j} C_ij^2
    loss       = invariance + lambd * redundancy

Distributed semantics (examples: docs/loss.md). Under `jax.jit` with batch-sharded inputs, pass
`axis_name=None`: the arrays are the global batch and XLA inserts the collectives; this holds on
meshes with Explicit axis types (`jax.make_mesh`'s default) as on Auto ones, with the same value
and gradient (`loss_kernels.einsum` names each contraction's result sharding). Inside
`jax.shard_map` (or `pmap`) pass the mesh axis: the arrays are this device's rows, statistics and
`C` are summed over the axis, every device returns the same global loss, and the gradient with
respect to a shard is that shard's slice of the gradient of the global loss. (The PyTorch
reference gets 1/W of it; docs/reference.md §3.) This holds for `jax.grad` taken inside
`shard_map` (default `check_vma=True`) or inside `pmap`, and for `jax.grad` of a `shard_map` with
`out_specs=P()`. The one combination to avoid is `jax.grad`
outside a `shard_map(..., check_vma=False)`, which yields 1/W of the gradient: with
`check_vma=False` take the gradient inside, as under `pmap`.

Variants (`variant=`), the ablations of the paper's Table 4 and Appendix A:

- `"barlow_twins"`: the loss above.
- `"invariance_only"`: `loss = invariance`.
- `"redundancy_only"`: `loss = lambd * redundancy` (the baseline with the invariance term removed).
- `"feature_norm"`: each embedding (row) is normalised along the feature axis instead of the batch
  axis, without mean subtraction: `a_n = z_n / sqrt(mean_d z_nd^2 + eps)`, so entries have unit
  mean square per row (as batch-normalised entries do per column); then the baseline formula.
- `"cross_covariance"`: no batch normalisation, only centring with the global batch mean, so `C` is
  the cross-covariance `(Z_A - mean)^T (Z_B - mean) / N`; then the baseline formula.
- `"cross_entropy"`: batch normalisation as the baseline, then, with `tau = temperature`,
  `invariance = -log sum_i exp(C_ii / tau)`,
  `redundancy = log sum_{i != j} exp(max(C_ij, 0) / tau)`, `loss = invariance + lambd * redundancy`.
- `"auto_correlation"`: invariance from the cross-correlation diagonal as the baseline; redundancy
  from each view's own correlation, averaged:
  `redundancy = (sum_{i != j} (C_AA)_ij^2 + sum_{i != j} (C_BB)_ij^2) / 2` with `C_AA = A^T A / N`;
  `loss = invariance + lambd * redundancy`.

Methods (`method=`), all equal in value and gradient up to float32 rounding:

- `"dense"`: builds the `D x D` matrix `C` (`4 D^2` bytes; ~`2 N D^2` FLOPs forward).
- `"gram"`: never builds `C`; uses `||A^T B||_F^2 = sum((A A^T) * (B B^T))` with the `N x N` Gram
  matrices (~`4 N^2 D` FLOPs, `4 N^2` bytes) and takes the diagonal of `C` from column dot products.
  Under `axis_name`, the normalised shards are all-gathered (`N D` values per view, against `D^2`
  for the psum of a dense `C`) and each device forms only its own rows of the Gram matrices, so the
  work is split evenly. Not available for `"cross_entropy"`, which needs every entry of `C`.
- `"blockwise"`: builds `C` in column tiles of width `block_size` under `jax.checkpoint` inside a
  `lax.scan`, so neither the forward nor the backward pass holds more than a tile of `C`
  (`4 D block_size` bytes); same FLOPs as dense plus one recomputation in the backward pass.
- `"auto"` (the rule, with `N` the global batch): `"cross_entropy"` uses `"dense"` when
  `4 D^2 <= 1 GiB` (D <= 16384), else `"blockwise"`. Every other variant uses `"gram"` when
  `N < D` and `4 N^2 <= 1 GiB` (Gram FLOPs `N^2 D` beat dense `N D^2`; on a 2-core CPU measured
  4-6x faster than the dense PyTorch formula at N=1024, D=8192, and slower than dense at
  N = D = 2048), else `"dense"` when `4 D^2 <= 1 GiB`, else `"blockwise"`. The device count enters
  only through `N`: under `axis_name` dense and gram both split their FLOPs evenly over the
  devices, so the crossover stays at `N = D`.

All statistics and matmuls run in float32 with `precision=HIGHEST` whatever the input dtype
(bfloat16 included); the loss is a float32 scalar. Bad arguments raise `ValueError` at trace time.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from barlow_jax import loss_kernels
from barlow_jax.loss_kernels import default_block_size  # Public here since before the split.

VARIANTS = (
  "barlow_twins",
  "invariance_only",
  "redundancy_only",
  "feature_norm",
  "cross_covariance",
  "cross_entropy",
  "auto_correlation",
)
METHODS = ("auto", "dense", "gram", "blockwise")

# Variants whose redundancy term is a function of every entry of C (not only of ||C||_F).
_NEEDS_ALL_OF_C = ("cross_entropy",)
# Largest N x N or D x D float32 matrix "auto" is willing to materialise.
_AUTO_MAX_MATRIX_BYTES = 1 << 30


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _scale_cotangent(x, scale: float):
  return x


def _scale_cotangent_fwd(x, scale):
  return x, None


def _scale_cotangent_bwd(scale, _, cotangent):
  return (cotangent * scale,)


_scale_cotangent.defvjp(_scale_cotangent_fwd, _scale_cotangent_bwd)


def _varying_axes(x) -> frozenset:
  """The manual axes `x` is typed as varying over (shard_map with check_vma=True), else empty."""
  aval = jax.typeof(x)
  manual = getattr(aval, "manual_axis_type", None)  # jax >= 0.10
  if manual is not None:
    return frozenset(manual.varying)
  return frozenset(getattr(aval, "vma", ()))  # jax 0.6 - 0.9


def _per_device_seed_fix(terms: dict, z, axis_name) -> dict:
  """Makes the gradient right when psum transposes to psum (pmap, shard_map(check_vma=False)).

  There every device seeds the replicated loss with cotangent 1, so autodiff returns the gradient
  of W copies of the loss. With check_vma=True (shard_map's default) the inputs are typed as
  varying over the axis, psum transposes to a broadcast, and the gradient is already exact.
  """
  if axis_name is None or axis_name in _varying_axes(z):
    return terms
  scale = 1.0 / lax.axis_size(axis_name)
  return {key: _scale_cotangent(value, scale) for key, value in terms.items()}


def _check_inputs(name_a, z_a, name_b, z_b, axis_name) -> tuple[int, int]:
  """Validates shapes and dtypes; returns (global batch size, feature dimension)."""
  for name, z in ((name_a, z_a), (name_b, z_b)):
    shape = jnp.shape(z)
    if len(shape) != 2:
      raise ValueError(f"`{name}` must have rank 2 [N, D], got shape {shape}.")
    if not jnp.issubdtype(jnp.result_type(z), jnp.floating):
      raise ValueError(
        f"`{name}` must be a floating-point array, got dtype {jnp.result_type(z)}; "
        "cast the embeddings with .astype(jnp.float32)."
      )
  if jnp.shape(z_a) != jnp.shape(z_b):
    raise ValueError(
      f"`{name_a}` and `{name_b}` must have the same shape, got {jnp.shape(z_a)} and "
      f"{jnp.shape(z_b)}."
    )
  n_local, d = jnp.shape(z_a)
  n_global = n_local * _axis_size(name_a, z_a, name_b, z_b, axis_name)
  if n_global < 2:
    raise ValueError(
      f"`{name_a}` / `{name_b}`: the global batch has {n_global} example(s) "
      f"(per-device batch {n_local}, axis_name={axis_name!r}); batch statistics need N >= 2."
    )
  if d < 1:
    raise ValueError(f"`{name_a}` / `{name_b}` have no features (D = 0).")
  return n_global, d


def _axis_size(name_a, z_a, name_b, z_b, axis_name) -> int:
  """Devices the batch is split over (1 for axis_name=None); misuse of `axis_name` -> ValueError."""
  if axis_name is None:
    varying = sorted(_varying_axes(z_a) | _varying_axes(z_b))
    if varying:
      names = ", ".join(repr(a) for a in varying)
      raise ValueError(
        f"`{name_a}` / `{name_b}` are per-device shards inside jax.shard_map (they vary over mesh "
        f"axis {names}) but `axis_name` is None, which would compute each device's own loss of "
        f"its rows: pass axis_name={varying[0]!r} (the axis in_specs splits the batch over)."
      )
    return 1
  try:
    return lax.axis_size(axis_name)
  except NameError as e:
    raise ValueError(
      f"`axis_name={axis_name!r}` names no mapped axis here: it is only for the per-device rows "
      "inside jax.shard_map or jax.pmap over that axis (e.g. jax.shard_map(loss_fn, mesh=mesh, "
      'in_specs=(P("data"), P("data")), out_specs=P()) with axis_name="data"). Under jax.jit '
      "with batch-sharded inputs (Auto or Explicit mesh) or on one device, the arrays are the "
      "whole batch: pass axis_name=None."
    ) from e


def _check_number(name: str, value, *, minimum: float, strict: bool) -> None:
  """Checks a Python or concrete scalar; traced values cannot be checked and are let through."""
  try:
    x = float(value)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return
  if x != x or (x <= minimum if strict else x < minimum):
    relation = ">" if strict else ">="
    raise ValueError(f"`{name}` must be {relation} {minimum}, got {value}.")


def _normalise(z, variant: str, n_global: int, eps: float, axis_name) -> jax.Array:
  """Per-view normalisation of a [N_local, D] shard, in float32."""
  z = z.astype(jnp.float32)
  if variant == "feature_norm":
    return z * lax.rsqrt(jnp.mean(z * z, axis=1, keepdims=True) + eps)
  mean = loss_kernels.psum(jnp.sum(z, axis=0), axis_name) / n_global
  centred = z - mean
  if variant == "cross_covariance":
    return centred
  # Two passes (mean, then centred squares) rather than E[z^2] - E[z]^2: embeddings with a large
  # common offset would otherwise lose their variance to cancellation.
  var = loss_kernels.psum(jnp.sum(centred * centred, axis=0), axis_name) / n_global
  return centred * lax.rsqrt(var + eps)


def choose_method(variant: str, n_global: int, d: int) -> str:
  """What `method="auto"` picks for `variant` at global batch `n_global` and width `d`.

  Returns "dense", "gram" or "blockwise" by the rule of the module docstring.
  """
  dense_fits = 4 * d * d <= _AUTO_MAX_MATRIX_BYTES
  if variant in _NEEDS_ALL_OF_C:
    return "dense" if dense_fits else "blockwise"
  if n_global < d and 4 * n_global * n_global <= _AUTO_MAX_MATRIX_BYTES:
    return "gram"
  return "dense" if dense_fits else "blockwise"


def _validate_options(variant, method, lambd, eps, temperature, block_size) -> None:
  if variant not in VARIANTS:
    raise ValueError(f"`variant` must be one of {VARIANTS}, got {variant!r}.")
  if method not in METHODS:
    raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
  if variant in _NEEDS_ALL_OF_C and method == "gram":
    raise ValueError(
      f"`method='gram'` cannot compute variant {variant!r}: its redundancy term needs every entry "
      "of C, which the Gram form never builds. Use method='dense', 'blockwise' or 'auto'."
    )
  _check_number("lambd", lambd, minimum=0.0, strict=False)
  _check_number("eps", eps, minimum=0.0, strict=False)
  if variant == "cross_entropy":
    _check_number("temperature", temperature, minimum=0.0, strict=True)
  if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
    raise ValueError(f"`block_size` must be a positive int or None, got {block_size!r}.")


def batch_standardise(z, *, axis_name=None, eps: float = 1e-5) -> jax.Array:
  """Each feature of z [N, D] at zero mean and unit variance over the batch, as C sees it.

  `(z - mean) / sqrt(var + eps)` with the biased variance (two passes), in float32; under
  `axis_name` the statistics are over the global batch. `cross_correlation(z_a, z_b)` is
  `batch_standardise(z_a).T @ batch_standardise(z_b) / N`.
  """
  n_global, _ = _check_inputs("z", z, "z", z, axis_name)
  _check_number("eps", eps, minimum=0.0, strict=False)
  return _normalise(z, "barlow_twins", n_global, eps, axis_name)


def cross_correlation(z_a, z_b, *, axis_name=None, eps: float = 1e-5) -> jax.Array:
  """The Barlow Twins cross-correlation matrix of two views.

  Args:
    z_a: [N, D] embeddings of view A (any float dtype); under `axis_name`, this device's rows.
    z_b: [N, D] embeddings of view B, same shape.
    axis_name: mesh/pmap axis the batch is split over, or None when the arrays are the whole batch.
    eps: added to the biased batch variance inside the square root (as BatchNorm).

  Returns:
    [D, D] float32 `C = A^T B / N_global`, A and B the batch-normalised views (global statistics);
    the same matrix on every device.
  """
  n_global, _ = _check_inputs("z_a", z_a, "z_b", z_b, axis_name)
  _check_number("eps", eps, minimum=0.0, strict=False)
  a = _normalise(z_a, "barlow_twins", n_global, eps, axis_name)
  b = loss_kernels.like(_normalise(z_b, "barlow_twins", n_global, eps, axis_name), a)
  return loss_kernels.full_matrix(a, b, n_global, axis_name)


def _raw_terms(a, b, variant, method, n_global, axis_name, temperature, block_size):
  """(invariance, redundancy) of the normalised views, before weighting, by `method`."""
  diag = loss_kernels.column_dots(a, b, n_global, axis_name)

  if variant == "cross_entropy":
    invariance = -jax.nn.logsumexp(diag / temperature)
    if method == "dense":
      c = loss_kernels.full_matrix(a, b, n_global, axis_name)
      logits = jnp.where(
        loss_kernels.offdiag_mask(c.shape), jnp.maximum(c, 0.0) / temperature, -jnp.inf
      )
      redundancy = jax.nn.logsumexp(logits)
    else:
      tile_fn = lambda c, mask: jax.nn.logsumexp(
        jnp.where(mask, jnp.maximum(c, 0.0) / temperature, -jnp.inf)
      )
      redundancy = jax.nn.logsumexp(
        loss_kernels.blockwise_reduce(a, b, n_global, axis_name, block_size, tile_fn)
      )
  else:
    invariance = jnp.sum((1.0 - diag) ** 2)
    pairs = ((a, a), (b, b)) if variant == "auto_correlation" else ((a, b),)
    sums = []
    for left, right in pairs:
      if method == "dense":
        sums.append(loss_kernels.offdiag_sumsq_dense(left, right, n_global, axis_name))
      elif method == "gram":
        pair_diag = (
          diag if right is not left else loss_kernels.column_dots(left, left, n_global, axis_name)
        )
        sums.append(loss_kernels.offdiag_sumsq_gram(left, right, pair_diag, n_global, axis_name))
      else:
        sums.append(
          loss_kernels.offdiag_sumsq_blockwise(left, right, n_global, axis_name, block_size)
        )
    redundancy = sum(sums) / len(sums)
  return invariance, redundancy


def barlow_twins_loss_terms(
  z_a,
  z_b,
  *,
  lambd: float = 0.0051,
  variant: str = "barlow_twins",
  axis_name=None,
  method: str = "auto",
  eps: float = 1e-5,
  temperature: float = 0.1,
  block_size: int | None = None,
) -> dict[str, jax.Array]:
  """The loss and its two raw terms, for logging.

  Args: as `barlow_twins_loss`.

  Returns:
    `{"loss", "invariance", "redundancy"}`, float32 scalars: the two terms before weighting (their
    exact form per variant is in the module docstring) and the variant's loss.
  """
  _validate_options(variant, method, lambd, eps, temperature, block_size)
  n_global, d = _check_inputs("z_a", z_a, "z_b", z_b, axis_name)
  if method == "auto":
    method = choose_method(variant, n_global, d)
  if block_size is None:
    block_size = default_block_size(d)

  a = _normalise(z_a, variant, n_global, eps, axis_name)
  b = loss_kernels.like(_normalise(z_b, variant, n_global, eps, axis_name), a)
  invariance, redundancy = _raw_terms(
    a, b, variant, method, n_global, axis_name, temperature, block_size
  )

  if variant == "invariance_only":
    loss = invariance
  elif variant == "redundancy_only":
    loss = lambd * redundancy
  else:
    loss = invariance + lambd * redundancy
  terms = {
    "loss": jnp.asarray(loss, jnp.float32),
    "invariance": jnp.asarray(invariance, jnp.float32),
    "redundancy": jnp.asarray(redundancy, jnp.float32),
  }
  return _per_device_seed_fix(terms, z_a, axis_name)


def barlow_twins_loss(
  z_a,
  z_b,
  *,
  lambd: float = 0.0051,
  variant: str = "barlow_twins",
  axis_name=None,
  method: str = "auto",
  eps: float = 1e-5,
  temperature: float = 0.1,
  block_size: int | None = None,
) -> jax.Array:
  """The Barlow Twins loss of two views (docs/reference.md §1), a float32 scalar.

  Args:
    z_a: [N, D] embeddings of view A, any float dtype (computed in float32). Under `axis_name`,
      this device's N rows of the global batch.
    z_b: [N, D] embeddings of view B, same shape.
    lambd: weight of the redundancy term (>= 0); the released code's 0.0051 by default.
    variant: one of `VARIANTS` (module docstring gives each formula).
    axis_name: the mesh axis the batch is split over inside `shard_map`/`pmap`; None when the
      arrays hold the whole batch (also under `jit` with batch-sharded inputs).
    method: "auto", "dense", "gram" or "blockwise" (module docstring: costs and the auto rule).
    eps: added to the variance inside the square root of the normalisation.
    temperature: tau of the "cross_entropy" variant (> 0); ignored by the others.
    block_size: column-tile width of "blockwise"; None picks a tile of at most 128 MiB.

  Returns:
    The loss, a float32 scalar, the same on every device under `axis_name`.
  """
  return barlow_twins_loss_terms(
    z_a,
    z_b,
    lambd=lambd,
    variant=variant,
    axis_name=axis_name,
    method=method,
    eps=eps,
    temperature=temperature,
    block_size=block_size,
  )["loss"]

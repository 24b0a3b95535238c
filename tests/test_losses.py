"""barlow_jax.losses against an independent float64 NumPy restatement of docs/reference.md §1.

The reference below is written from the formulas (and the module docstring's variant definitions),
not from the JAX code; its gradient is a float64 central finite difference, so it shares nothing
with JAX autodiff.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from barlow_jax import losses

N, D = 16, 20  # N < D so "auto" picks gram; divisible by the 8 emulated devices.
BLOCK = 8  # Three column tiles over D = 20, the last one padded.
LAMBD = 0.0051
TAU = 0.5
EPS = 1e-5
RTOL = 1e-5


# ---------------------------------------------------------------- float64 reference


def _logsumexp(x):
  m = np.max(x)
  return m + np.log(np.sum(np.exp(x - m)))


def ref_terms(z_a, z_b, variant, lambd=LAMBD, eps=EPS, tau=TAU):
  """docs/reference.md §1 and the documented variants, in float64."""
  z_a, z_b = np.asarray(z_a, np.float64), np.asarray(z_b, np.float64)
  n, d = z_a.shape

  def normalise(z):
    if variant == "feature_norm":
      return z / np.sqrt(np.mean(z**2, axis=1, keepdims=True) + eps)
    centred = z - z.mean(axis=0)
    if variant == "cross_covariance":
      return centred
    return centred / np.sqrt(centred.var(axis=0) + eps)

  a, b = normalise(z_a), normalise(z_b)
  c = a.T @ b / n
  off = ~np.eye(d, dtype=bool)
  if variant == "cross_entropy":
    invariance = -_logsumexp(np.diag(c) / tau)
    redundancy = _logsumexp(np.maximum(c[off], 0.0) / tau)
  else:
    invariance = np.sum((1.0 - np.diag(c)) ** 2)
    if variant == "auto_correlation":
      c_aa, c_bb = a.T @ a / n, b.T @ b / n
      redundancy = 0.5 * (np.sum(c_aa[off] ** 2) + np.sum(c_bb[off] ** 2))
    else:
      redundancy = np.sum(c[off] ** 2)
  if variant == "invariance_only":
    loss = invariance
  elif variant == "redundancy_only":
    loss = lambd * redundancy
  else:
    loss = invariance + lambd * redundancy
  return {"loss": loss, "invariance": invariance, "redundancy": redundancy}


def ref_grad(z_a, z_b, variant, h=1e-6):
  """Central finite differences of the float64 reference loss, per input entry."""
  z_a, z_b = np.asarray(z_a, np.float64), np.asarray(z_b, np.float64)
  grads = []
  for which in range(2):
    base = [z_a.copy(), z_b.copy()]
    g = np.zeros_like(base[which])
    for idx in np.ndindex(g.shape):
      plus, minus = [x.copy() for x in base], [x.copy() for x in base]
      plus[which][idx] += h
      minus[which][idx] -= h
      g[idx] = (ref_terms(*plus, variant)["loss"] - ref_terms(*minus, variant)["loss"]) / (2 * h)
    grads.append(g)
  return grads


def make_inputs(seed=0, n=N, d=D):
  """Correlated views with non-trivial per-feature means and scales."""
  rng = np.random.default_rng(seed)
  mean = rng.normal(0.0, 3.0, size=(1, d))
  scale = rng.uniform(0.3, 3.0, size=(1, d))
  z_a = rng.normal(size=(n, d))
  z_b = 0.8 * z_a + 0.6 * rng.normal(size=(n, d))
  z_a = z_a * scale + mean
  z_b = z_b * scale[:, ::-1] - mean
  return z_a.astype(np.float32), z_b.astype(np.float32)


@functools.cache
def reference(variant):
  z_a, z_b = make_inputs()
  return ref_terms(z_a, z_b, variant), ref_grad(z_a, z_b, variant)


def rel_err(x, ref):
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def loss_and_grad(variant, method, **kwargs):
  def f(z_a, z_b):
    terms = losses.barlow_twins_loss_terms(
      z_a, z_b, lambd=LAMBD, variant=variant, method=method, temperature=TAU, **kwargs
    )
    return terms["loss"], terms

  return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))


# ---------------------------------------------------------------- single device


COMBOS = [
  (variant, method)
  for variant in losses.VARIANTS
  for method in losses.METHODS
  if not (variant == "cross_entropy" and method == "gram")
]


@pytest.mark.parametrize("variant,method", COMBOS)
def test_value_and_gradient_match_float64_reference(variant, method):
  z_a, z_b = make_inputs()
  ref, (g_a, g_b) = reference(variant)
  (loss, terms), (d_a, d_b) = loss_and_grad(variant, method, block_size=BLOCK)(z_a, z_b)
  assert loss.dtype == jnp.float32 and loss.shape == ()
  for key in ("loss", "invariance", "redundancy"):
    assert rel_err(terms[key], ref[key]) < RTOL, (key, float(terms[key]), ref[key])
  assert rel_err(d_a, g_a) < RTOL
  assert rel_err(d_b, g_b) < RTOL


def test_loss_matches_terms_and_plain_call():
  z_a, z_b = make_inputs()
  ref, _ = reference("barlow_twins")
  loss = losses.barlow_twins_loss(z_a, z_b)  # Defaults: lambd 0.0051, auto.
  assert rel_err(loss, ref["loss"]) < RTOL


def test_cross_correlation_matches_reference():
  z_a, z_b = make_inputs(seed=1)
  a = (z_a - z_a.mean(0, dtype=np.float64)) / np.sqrt(z_a.var(0, dtype=np.float64) + EPS)
  b = (z_b - z_b.mean(0, dtype=np.float64)) / np.sqrt(z_b.var(0, dtype=np.float64) + EPS)
  c = losses.cross_correlation(z_a, z_b)
  assert c.shape == (D, D) and c.dtype == jnp.float32
  assert rel_err(c, a.T @ b / N) < RTOL


@pytest.mark.parametrize("method", ["dense", "gram", "blockwise"])
def test_orthonormal_whitened_embeddings_give_zero_loss(method):
  n, d = 32, 8
  rng = np.random.default_rng(3)
  x = rng.normal(size=(n, d))
  q, _ = np.linalg.qr(x - x.mean(0))  # Orthonormal columns, each orthogonal to the ones vector.
  z = (q * np.sqrt(n)).astype(np.float32)  # Column mean 0, biased variance 1.
  terms = losses.barlow_twins_loss_terms(z, z, method=method, block_size=3)
  # C = I / (1 + eps): invariance = d (eps / (1 + eps))^2, redundancy 0.
  assert abs(float(terms["loss"])) < 1e-5
  assert abs(float(terms["redundancy"])) < 1e-4
  # A non-whitened batch is far from 0: the test can fail.
  assert float(losses.barlow_twins_loss(z, z[::-1], method=method)) > 1.0


@pytest.mark.parametrize("method", ["dense", "gram", "blockwise"])
def test_collapsed_input_gives_invariance_d(method):
  z = np.tile(np.random.default_rng(4).normal(size=(1, D)), (N, 1)).astype(np.float32)
  terms = losses.barlow_twins_loss_terms(z, z, method=method, block_size=BLOCK)
  np.testing.assert_allclose(float(terms["invariance"]), D, rtol=1e-4)
  assert abs(float(terms["redundancy"])) < 1e-4


def test_bfloat16_inputs_give_the_float32_answer_on_upcast_inputs():
  z_a, z_b = (jnp.asarray(z, jnp.bfloat16) for z in make_inputs())
  up_a, up_b = z_a.astype(jnp.float32), z_b.astype(jnp.float32)
  fn = jax.value_and_grad(losses.barlow_twins_loss, argnums=(0, 1))
  loss16, (g16, _) = fn(z_a, z_b)
  loss32, (g32, _) = fn(up_a, up_b)
  assert loss16.dtype == jnp.float32
  assert g16.dtype == jnp.bfloat16
  assert rel_err(loss16, loss32) < RTOL
  # The gradient is computed in float32 and rounded to the input dtype at the end.
  assert rel_err(g16, g32) < 2**-8


def test_auto_rule():
  choose = losses.choose_method
  assert choose("barlow_twins", 1024, 8192) == "gram"
  assert choose("barlow_twins", 512, 65536) == "gram"
  assert choose("barlow_twins", 4096, 2048) == "dense"
  assert choose("barlow_twins", 65536, 32768) == "blockwise"
  assert choose("cross_entropy", 256, 8192) == "dense"
  assert choose("cross_entropy", 256, 32768) == "blockwise"


# ---------------------------------------------------------------- 8 devices


@pytest.fixture(scope="module")
def mesh(devices):
  return Mesh(np.array(devices), ("data",))


SHARDED = [
  ("barlow_twins", "dense"),
  ("barlow_twins", "gram"),
  ("barlow_twins", "blockwise"),
  ("auto_correlation", "gram"),
  ("cross_entropy", "blockwise"),
  ("feature_norm", "auto"),
]


@pytest.mark.parametrize("variant,method", SHARDED)
def test_shard_map_matches_single_device(mesh, variant, method):
  z_a, z_b = make_inputs()
  ref, (g_a, g_b) = reference(variant)
  kw = dict(lambd=LAMBD, variant=variant, method=method, temperature=TAU, block_size=BLOCK)

  # Gradient taken inside shard_map: what a shard_map train step does.
  def local(za, zb):
    loss_fn = functools.partial(losses.barlow_twins_loss, axis_name="data", **kw)
    return jax.value_and_grad(loss_fn, argnums=(0, 1))(za, zb)

  fn = jax.jit(
    jax.shard_map(
      local, mesh=mesh, in_specs=(P("data"), P("data")), out_specs=(P(), (P("data"), P("data")))
    )
  )
  loss, (d_a, d_b) = fn(z_a, z_b)
  assert rel_err(loss, ref["loss"]) < RTOL
  assert rel_err(d_a, g_a) < RTOL
  assert rel_err(d_b, g_b) < RTOL


def test_shard_map_gradient_taken_outside(mesh):
  z_a, z_b = make_inputs()
  ref, (g_a, g_b) = reference("barlow_twins")
  loss_fn = jax.shard_map(
    functools.partial(losses.barlow_twins_loss, axis_name="data", method="gram"),
    mesh=mesh,
    in_specs=(P("data"), P("data")),
    out_specs=P(),
  )
  loss, (d_a, d_b) = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))(z_a, z_b)
  assert rel_err(loss, ref["loss"]) < RTOL
  assert rel_err(d_a, g_a) < RTOL
  assert rel_err(d_b, g_b) < RTOL


@pytest.mark.parametrize(
  "mode,method", [("pmap", "dense"), ("shard_map_check_vma_false", "dense"), ("pmap", "gram")]
)
def test_gradient_inside_pmap_and_unchecked_shard_map(mesh, mode, method):
  # There psum transposes to psum (every device seeds the replicated loss); the loss corrects it.
  z_a, z_b = make_inputs()
  ref, (g_a, g_b) = reference("barlow_twins")
  grad_fn = jax.value_and_grad(
    functools.partial(losses.barlow_twins_loss, axis_name="data", method=method), argnums=(0, 1)
  )
  if mode == "pmap":
    loss, (d_a, d_b) = jax.pmap(grad_fn, axis_name="data")(
      z_a.reshape(8, N // 8, D), z_b.reshape(8, N // 8, D)
    )
    loss = loss[3]
  else:
    spec = P("data")
    loss, (d_a, d_b) = jax.jit(
      jax.shard_map(
        grad_fn, mesh=mesh, in_specs=(spec, spec), out_specs=(P(), (spec, spec)), check_vma=False
      )
    )(z_a, z_b)
  assert rel_err(loss, ref["loss"]) < RTOL
  assert rel_err(np.reshape(d_a, (N, D)), g_a) < RTOL
  assert rel_err(np.reshape(d_b, (N, D)), g_b) < RTOL


@pytest.mark.parametrize("method", ["dense", "gram", "blockwise"])
def test_sharded_jit_matches_single_device(mesh, method):
  sharding = NamedSharding(mesh, P("data"))
  z_a, z_b = (jax.device_put(z, sharding) for z in make_inputs())
  assert len(z_a.sharding.device_set) == 8
  ref, (g_a, g_b) = reference("barlow_twins")
  (loss, _), (d_a, d_b) = loss_and_grad("barlow_twins", method, block_size=BLOCK)(z_a, z_b)
  assert rel_err(loss, ref["loss"]) < RTOL
  assert rel_err(d_a, g_a) < RTOL
  assert rel_err(d_b, g_b) < RTOL


# ---------------------------------------------------------------- bad input


def _raises(match, *args, **kwargs):
  with pytest.raises(ValueError, match=match):
    losses.barlow_twins_loss(*args, **kwargs)


def test_bad_input_raises_value_error_naming_the_argument():
  z = np.zeros((4, 3), np.float32)
  _raises("same shape", z, np.zeros((4, 5), np.float32))
  _raises("`z_a` must have rank 2", z[None], z[None])
  _raises("`z_b` must have rank 2", z, z[0])
  _raises("global batch has 1", z[:1], z[:1])
  _raises("`z_a` must be a floating-point", z.astype(np.int32), z)
  _raises("`variant`", z, z, variant="barlow")
  _raises("`method`", z, z, method="fast")
  _raises("`lambd`", z, z, lambd=-0.1)
  _raises("`temperature`", z, z, variant="cross_entropy", temperature=0.0)
  _raises("method='gram'", z, z, variant="cross_entropy", method="gram")
  _raises("`block_size`", z, z, method="blockwise", block_size=0)
  with pytest.raises(ValueError, match="`z_a` must have rank 2"):
    losses.cross_correlation(z[0], z[0])


def test_bad_input_raises_at_trace_time():
  traced = jax.jit(functools.partial(losses.barlow_twins_loss, method="fast"))
  with pytest.raises(ValueError, match="`method`"):
    traced.lower(jax.ShapeDtypeStruct((4, 3), jnp.float32), jax.ShapeDtypeStruct((4, 3), "f4"))


# ---------------------------------------------------------------- Explicit and Auto meshes


def _typed_mesh(devices, axis_type):
  return jax.make_mesh((8,), ("data",), axis_types=(axis_type,), devices=devices)


@pytest.mark.parametrize("axis_type", ["Explicit", "Auto"])
@pytest.mark.parametrize("method", losses.METHODS)
def test_jit_on_explicit_and_auto_meshes_matches_the_reference(devices, axis_type, method):
  """Issue 26, item 1: `jax.make_mesh` gives Explicit axes by default; with the views on
  `NamedSharding(mesh, P("data"))` every method and variant gives the float64 reference's value
  and gradient under jit, on Explicit meshes as on Auto ones."""
  mesh = _typed_mesh(devices, getattr(jax.sharding.AxisType, axis_type))
  assert mesh.axis_types == (getattr(jax.sharding.AxisType, axis_type),)
  sharding = NamedSharding(mesh, P("data"))
  z_a, z_b = (jax.device_put(z, sharding) for z in make_inputs())
  for variant in losses.VARIANTS:
    if variant == "cross_entropy" and method == "gram":
      continue
    ref, (g_a, g_b) = reference(variant)
    (loss, terms), (d_a, d_b) = loss_and_grad(variant, method, block_size=BLOCK)(z_a, z_b)
    assert rel_err(loss, ref["loss"]) < RTOL, variant
    assert rel_err(terms["redundancy"], ref["redundancy"]) < RTOL, variant
    assert rel_err(d_a, g_a) < RTOL, variant
    assert rel_err(d_b, g_b) < RTOL, variant
    assert d_a.sharding.is_equivalent_to(sharding, 2), variant  # The gradient stays batch-split.


@pytest.mark.parametrize("spec_a,spec_b", [(P(None, "data"), P(None, "data")), (P("data"), P())])
def test_explicit_mesh_with_features_split_or_mixed_shardings(devices, spec_a, spec_b):
  mesh = _typed_mesh(devices, jax.sharding.AxisType.Explicit)
  z_a, z_b = make_inputs(n=N, d=16)
  z_a = jax.device_put(z_a, NamedSharding(mesh, spec_a))
  z_b = jax.device_put(z_b, NamedSharding(mesh, spec_b))
  expected = ref_terms(np.asarray(z_a), np.asarray(z_b), "barlow_twins")["loss"]
  for method in ("dense", "gram", "blockwise"):
    (loss, _), _ = loss_and_grad("barlow_twins", method, block_size=BLOCK)(z_a, z_b)
    assert rel_err(loss, expected) < RTOL, method


@pytest.mark.parametrize("axis_type", ["Explicit", "Auto"])
def test_shard_map_on_explicit_and_auto_meshes(devices, axis_type):
  # The docs/loss.md example: views put on the mesh, the batch split by in_specs, axis_name.
  mesh = _typed_mesh(devices, getattr(jax.sharding.AxisType, axis_type))
  sharding = NamedSharding(mesh, P("data"))
  z_a, z_b = (jax.device_put(z, sharding) for z in make_inputs())
  ref, (g_a, g_b) = reference("barlow_twins")
  loss_fn = jax.shard_map(
    functools.partial(losses.barlow_twins_loss, axis_name="data", lambd=LAMBD),
    mesh=mesh,
    in_specs=(P("data"), P("data")),
    out_specs=P(),
  )
  loss, (d_a, d_b) = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))(z_a, z_b)
  assert rel_err(loss, ref["loss"]) < RTOL
  assert rel_err(d_a, g_a) < RTOL and rel_err(d_b, g_b) < RTOL


def test_axis_name_misuse_says_which_to_pass(mesh):
  z_a, z_b = make_inputs()
  with pytest.raises(ValueError, match=r"names no mapped axis here.*pass axis_name=None"):
    losses.barlow_twins_loss(z_a, z_b, axis_name="data")
  with pytest.raises(ValueError, match=r"names no mapped axis here.*pass axis_name=None"):
    jax.jit(functools.partial(losses.cross_correlation, axis_name="batch"))(z_a, z_b)
  inside = jax.shard_map(
    losses.barlow_twins_loss, mesh=mesh, in_specs=(P("data"), P("data")), out_specs=P()
  )
  with pytest.raises(ValueError, match=r"vary over mesh axis 'data'.*pass axis_name='data'"):
    jax.jit(inside)(z_a, z_b)

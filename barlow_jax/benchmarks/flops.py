"""The exact FLOP count of one training step, from the model's shapes: the numerator of MFU.

    from barlow_jax.benchmarks import flops
    count = flops.step_flops(config)          # config: a run config (config.batch_size examples)
    count["flops_per_example"]  # 49.38e9: ResNet-50 + 8192-8192-8192, 224 px, batch 256

Why not XLA's own count: `cost_analysis()` counts what the backend's compiler leaves as plain HLO.
On a GPU the convolutions become cuDNN custom calls, which count 0, so XLA:GPU reports ~0.8
GFLOP per example for a step that does ~50. This count is computed from the shapes alone, the
same on every backend; XLA:CPU's count of the same step agrees with it within 2% (the test).

The step is `barlow_jax.train_step.train_step` with the monitors off (the steps a run times):
both views through backbone and projector, the loss, the backward pass, the optimizer update,
and the online probe when it has labels. One example is one pair of views. The rule:

- Convolutions and matmuls (backbone, projector, predictor): forward, from each layer's shapes,
  2 FLOPs per multiply-add, counting only the taps that fall inside the input (the zero padding of
  a 3x3 conv is not arithmetic; at 7x7 px it is 18% of the taps). Backward = 2x forward (the input
  gradient and the weight gradient each redo every multiply-add of the forward pass), except the
  stem's `conv1`, whose input is the images: it has no input gradient, so 1x.
  `autodiff_matches_rule` checks the rule against the convolutions autodiff actually emits.
- The loss's kernels (`barlow_jax.loss_kernels`: Gram or C products, normalisation,
  the terms) and their gradient, BatchNorm, ReLU, residual adds, pooling, the input's
  normalisation, the optimizer update (LARS: weight decay, two norms per weight, trust ratio,
  momentum, the learning rate) and the two global norms the step logs: counted from the program
  jax traces for each (forward and backward as autodiff writes them), by XLA's convention:
  1 FLOP per output element of an arithmetic op (add, multiply, compare, select, dtype
  conversion, ...), a reduction 1 per input element it folds in, a dot 2 per multiply-add;
  transcendentals (exp, rsqrt, ...; XLA counts them apart) and data movement (broadcast, reshape,
  transpose, slice, pad, gather) 0; what the compiler folds (operations on constants, x + 0,
  x * 1) 0, and values no output needs are dropped first, as jit drops them.
  A conditional counts its first branch (the monitors' "off" branch), a scan its body times its
  length.

Nothing is allocated: the state and batch are abstract shapes, and tracing a ResNet-50 step takes
seconds on a laptop.
"""

import functools
import math
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
from jax._src.interpreters import partial_eval as pe  # dce_jaxpr: no public name.
from jax.extend import core as jax_core

# The categories of the breakdown, in the order of the step ("input": the views' normalisation,
# and the colour augmentations with config.augment.on_device).
CATEGORIES = (
  "input",
  "backbone_convolutions",
  "projector_matmuls",
  "batchnorm_and_elementwise",
  "loss",
  "optimizer",
  "probe",
)
# Primitives XLA counts as 1 FLOP per output element.
_ELEMENTWISE = frozenset(
  (
    "add add_any sub mul div rem neg abs sign max min square integer_pow pow floor ceil round "
    "clamp select_n convert_element_type eq ne lt le gt ge and or not xor nextafter is_finite "
    "copysign"
  ).split()
)
_REDUCTIONS = frozenset(
  "reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or argmax argmin".split()
)
_CUMULATIVE = frozenset("cumsum cummax cummin cumprod cumlogsumexp".split())


def _size(aval) -> int:
  return math.prod(getattr(aval, "shape", ()))


@functools.cache
def _valid_taps(
  out_size: int, kernel: int, in_size: int, stride: int, pad_low: int, lhs_dil: int, rhs_dil: int
) -> int:
  """(output position, kernel tap) pairs of one spatial dimension whose input is not padding."""
  count = 0
  for o in range(out_size):
    base = o * stride - pad_low
    for k in range(kernel):
      position = base + k * rhs_dil
      if position % lhs_dil == 0 and 0 <= position // lhs_dil < in_size:
        count += 1
  return count


def conv_flops(eqn) -> int:
  """FLOPs of a traced `conv_general_dilated`: 2 per multiply-add with a non-padding input.

  Exact for any stride, padding, input (lhs) and kernel (rhs) dilation and feature or batch
  grouping, so the transposed convolutions of the backward pass count right too (their dilated
  holes are not arithmetic either).
  """
  lhs, rhs = eqn.invars[0].aval, eqn.invars[1].aval
  out = eqn.outvars[0].aval
  p = eqn.params
  lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
  taps = 1
  for d in range(len(lhs_spec) - 2):
    taps *= _valid_taps(
      out.shape[out_spec[2 + d]],
      rhs.shape[rhs_spec[2 + d]],
      lhs.shape[lhs_spec[2 + d]],
      p["window_strides"][d],
      p["padding"][d][0],
      (p["lhs_dilation"] or (1,) * 8)[d],
      (p["rhs_dilation"] or (1,) * 8)[d],
    )
  outputs = out.shape[out_spec[0]] * out.shape[out_spec[1]]
  return 2 * outputs * rhs.shape[rhs_spec[1]] * taps


def dot_flops(eqn) -> int:
  """FLOPs of a traced `dot_general`: 2 x output elements x contracted size."""
  (contracting, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval
  return 2 * _size(eqn.outvars[0].aval) * math.prod(lhs.shape[i] for i in contracting)


def _other_flops(eqn) -> int:
  name = eqn.primitive.name
  if name in _ELEMENTWISE:
    return _size(eqn.outvars[0].aval)
  if name in _REDUCTIONS:
    return max(_size(eqn.invars[0].aval) - _size(eqn.outvars[0].aval), 0)
  if name in _CUMULATIVE:
    return _size(eqn.outvars[0].aval)
  if name.startswith("reduce_window"):
    window = math.prod(eqn.params["window_dimensions"])
    return _size(eqn.outvars[0].aval) * (window - 1)
  if name == "select_and_scatter_add":
    return _size(eqn.invars[0].aval) * math.prod(eqn.params["window_dimensions"])
  return 0


def _sub_jaxprs(eqn):
  """The jaxprs an equation calls, with how many times each runs."""
  name = eqn.primitive.name
  if name == "cond":
    return [(eqn.params["branches"][0].jaxpr, 1)]
  repeats = eqn.params.get("length", 1) if name == "scan" else 1
  found = []
  for value in eqn.params.values():
    for item in value if isinstance(value, list | tuple) else (value,):
      if isinstance(item, jax_core.ClosedJaxpr):
        found.append((item.jaxpr, repeats))
      elif isinstance(item, jax_core.Jaxpr):
        found.append((item, repeats))
  if name in ("custom_jvp_call", "custom_vjp_call"):
    found = found[:1]  # The primal; the rule jaxprs do not run.
  return found


def _scalar_constant(atom, constants: dict):
  """The value of `atom` when it is a known scalar constant (a literal or folded from one)."""
  if isinstance(atom, jax_core.Literal):
    value = np.asarray(atom.val)
    return value.item() if value.size == 1 else _UNKNOWN
  return constants.get(atom)


_UNKNOWN = object()  # A constant whose value is not tracked (still folded: 0 FLOPs).
_IDENTITY = {"add": 0, "add_any": 0, "sub": 0, "mul": 1, "div": 1}


def _fold(eqn, constants: dict) -> bool:
  """Whether the compiler folds `eqn` away (0 FLOPs), recording constants it produces.

  XLA's conversion of the program folds operations on constants (optax's norms add
  `square(imag(x)) = square(0)` for every real leaf) and `x + 0`, `x * 1`: so does this count.
  """
  values = [_scalar_constant(v, constants) for v in eqn.invars]
  if values and all(v is not None for v in values):
    known = [v for v in values if v is not _UNKNOWN]
    result = _UNKNOWN
    if len(known) == len(values) and eqn.primitive.name in _SCALAR_OPS:
      result = _SCALAR_OPS[eqn.primitive.name](*known)
    for out in eqn.outvars:
      constants[out] = result
    return True
  identity = _IDENTITY.get(eqn.primitive.name)
  if identity is not None and len(values) == 2:
    # x + 0, x * 1 (and 0 + x, 1 * x where the op commutes).
    second = values[1] is not _UNKNOWN and values[1] == identity
    first = eqn.primitive.name in ("add", "add_any", "mul") and values[0] == identity
    return bool(second or (first and values[0] is not _UNKNOWN))
  return False


_SCALAR_OPS = {
  "broadcast_in_dim": lambda x, *_: x,
  "convert_element_type": lambda x: x,
  "reshape": lambda x, *_: x,
  "square": lambda x: x * x,
  "neg": lambda x: -x,
  "add": lambda x, y: x + y,
  "sub": lambda x, y: x - y,
  "mul": lambda x, y: x * y,
}


def count_jaxpr(jaxpr, classify=None, counts: Counter | None = None, repeats: int = 1) -> Counter:
  """FLOPs of every equation of `jaxpr` (sub-jaxprs included) by the rule of the module.

  Values no output depends on are dropped first (as jit does). `classify(eqn, kind) -> str` names
  each equation's category from its kind, "conv", "dot" or "other" (default: the kind); returns
  a Counter of FLOPs by category.
  """
  counts = Counter() if counts is None else counts
  jaxpr, _ = pe.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))
  constants = {}
  for eqn in jaxpr.eqns:
    subs = _sub_jaxprs(eqn)
    if subs:
      for sub, times in subs:
        count_jaxpr(sub, classify, counts, repeats * times)
      continue
    if _fold(eqn, constants):
      continue
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      kind, n = "conv", conv_flops(eqn)
    elif name == "dot_general":
      kind, n = "dot", dot_flops(eqn)
    else:
      kind, n = "other", _other_flops(eqn)
    if n:
      counts[classify(eqn, kind) if classify else kind] += n * repeats
  return counts


def _is_stem_conv(eqn) -> bool:
  return str(eqn.source_info.name_stack).endswith("backbone/conv1")


def _model_classify(eqn, kind: str) -> str:
  """Categories of the network's forward + backward equations (by their module's name)."""
  backward = "transpose(" in str(eqn.source_info.name_stack)
  if kind == "conv":
    return "backward_conv" if backward else ("stem_conv" if _is_stem_conv(eqn) else "conv")
  if kind == "dot":
    return "backward_dot" if backward else "dot"
  return "batchnorm_and_elementwise"


def _abstract_step_inputs(config, num_classes: int):
  """(state, batch) of `config`'s step as abstract shapes (the state on one device)."""
  from barlow_jax import parallel, train_state

  mesh = parallel.create_mesh(jax.devices()[:1])
  init = functools.partial(
    train_state.create_train_state, config, mesh=mesh, steps_per_epoch=1, num_classes=num_classes
  )
  state = jax.eval_shape(init, jax.random.key(0))
  size, batch = int(config.dataset.image_size), int(config.batch_size)
  view = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8)
  inputs = {"view_a": view, "view_b": view}
  if num_classes:
    inputs["label"] = jax.ShapeDtypeStruct((batch,), jnp.int32)
  return state, inputs


def _jaxprs(config, state, batch):
  """The step's parts as jaxprs: input, network forward + backward, loss, optimizer, probe."""
  from barlow_jax import losses, train_step
  from barlow_jax.data import device_augment

  model = state.model
  loss_config = config.loss
  views = jax.eval_shape(
    lambda b, s: device_augment.prepare_views(b, s, config=config), batch, state.step
  )

  def network(params, batch_stats, view_a, view_b, cotangents):
    apply = lambda p: forward(p, batch_stats, view_a, view_b)
    # The embeddings are outputs: the loss reads them (the backward pass alone would not need the
    # last matmul's forward result, and dropping dead values would drop it).
    embeddings, vjp, rep_a = jax.vjp(apply, params, has_aux=True)
    return embeddings, vjp(cotangents), rep_a

  def forward(params, batch_stats, view_a, view_b):
    (rep_a, _, z_a, z_b), _ = model.apply(
      {"params": params, "batch_stats": batch_stats},
      view_a,
      view_b,
      train=True,
      mutable=["batch_stats"],
    )
    return (z_a.astype(jnp.float32), z_b.astype(jnp.float32)), rep_a

  embeddings, rep_a = jax.eval_shape(forward, state.params, state.batch_stats, *views)

  def loss(z_a, z_b):
    def terms(z_a, z_b):
      out = losses.barlow_twins_loss_terms(
        z_a,
        z_b,
        lambd=float(loss_config.lambd),
        variant=loss_config.variant,
        method=loss_config.method,
        eps=float(loss_config.eps),
        temperature=float(loss_config.temperature),
      )
      return out["loss"], out

    return jax.value_and_grad(terms, argnums=(0, 1), has_aux=True)(z_a, z_b)

  def optimizer(grads, opt_state, params):
    updates, new_state = state.tx.update(grads, opt_state, params)
    new_params = jax.tree.map(jnp.add, params, updates)
    return new_params, new_state, train_step.global_norm(grads), train_step.global_norm(new_params)

  parts = {
    "input": jax.make_jaxpr(lambda b, s: device_augment.prepare_views(b, s, config=config))(
      batch, state.step
    ),
    "network": jax.make_jaxpr(network)(
      state.params, state.batch_stats, views[0], views[1], embeddings
    ),
    "loss": jax.make_jaxpr(loss)(*embeddings),
    "optimizer": jax.make_jaxpr(optimizer)(state.params, state.opt_state, state.params),
  }
  if state.probe_tx is not None and "label" in batch:
    probe = lambda s, r, y: train_step._probe_update(s, r, y)  # noqa: SLF001 -- the step's own.
    parts["probe"] = jax.make_jaxpr(probe)(state, rep_a, batch["label"])
  return parts


def step_flops(config, *, num_classes: int = 0) -> dict:
  """FLOPs of one training step of `config` (module docstring: the rule), from shapes alone.

  Args:
    config: a run config (`barlow_jax.config.base_config()` layout): `config.model`,
      `config.loss`, `config.optim`, `config.batch_size` global examples of
      `config.dataset.image_size` px uint8 views (`config.augment.on_device` included).
    num_classes: classes of the online probe, counted when > 0 (the step updates it only on
      labelled batches).

  Returns:
    `flops_per_step` and `flops_per_example` (= per step / `config.batch_size`; one example is a
    pair of views), `per_step` and `per_example`: dicts of FLOPs by `CATEGORIES`, and
    `network_forward_flops_per_example` (the convolutions and matmuls of both views, forward).

  Raises:
    ValueError: what the model or the loss raise for an invalid config (unknown backbone, ...).
  """
  state, batch = _abstract_step_inputs(config, num_classes)
  parts = _jaxprs(config, state, batch)
  per_step = dict.fromkeys(CATEGORIES, 0)
  network = count_jaxpr(parts.pop("network").jaxpr, _model_classify)
  forward_convs = network["conv"] + network["stem_conv"]
  per_step["backbone_convolutions"] = 3 * network["conv"] + 2 * network["stem_conv"]
  per_step["projector_matmuls"] = 3 * network["dot"]
  per_step["batchnorm_and_elementwise"] = network["batchnorm_and_elementwise"]
  for name, jaxpr in parts.items():
    per_step[name] += sum(count_jaxpr(jaxpr.jaxpr).values())
  batch_size = int(config.batch_size)
  total = sum(per_step.values())
  return {
    "flops_per_step": total,
    "flops_per_example": total / batch_size,
    "per_step": per_step,
    "per_example": {k: v / batch_size for k, v in per_step.items()},
    "network_forward_flops_per_example": (forward_convs + network["dot"]) / batch_size,
  }


def autodiff_matches_rule(config) -> dict:
  """The backward pass's convolutions and matmuls as autodiff writes them, against the rule.

  Returns `{"rule": 2 x forward - stem conv, "autodiff": counted from the traced backward}` in
  FLOPs per step: equal when the rule is exact for this network.
  """
  state, batch = _abstract_step_inputs(config, 0)
  network = count_jaxpr(_jaxprs(config, state, batch)["network"].jaxpr, _model_classify)
  rule = 2 * (network["conv"] + network["dot"]) + network["stem_conv"]
  return {"rule": rule, "autodiff": network["backward_conv"] + network["backward_dot"]}

"""One pretraining update on a global batch, and that update jitted over a mesh.

`train_step` is a pure function of (state, batch, monitor): the Barlow Twins loss of the two
views' embeddings (`barlow_jax.losses`), its gradient, the optimizer's update, the online linear
probe's update on the stop-gradient representations, and the logged monitors (collapse
statistics and pictures of the cross-correlation matrix C, `barlow_jax.monitors`). Under a
batch-sharded `jit` every batch statistic is global (see `barlow_jax.parallel`).

`jit_train_step` gives the step as the trainer runs it: state donated, batch sharded over the
mesh, and a count of compilations (a recompilation mid-run logs a warning).
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from barlow_jax import losses, monitors, parallel, spike_guard, train_state
from barlow_jax._deprecations import deprecation_getattr
from barlow_jax.data import device_augment
from barlow_jax.train_state import TrainState

# The names this module had before they moved (removed in 0.3).
_DEPRECATED = {"effective_rank": "barlow_jax.monitors.effective_rank"}
__getattr__ = deprecation_getattr(__name__, _DEPRECATED)

# Side of the C heatmaps written to TensorBoard.
HEATMAP_SIZE = 64


def global_norm(tree) -> jax.Array:
  """float32 L2 norm of every leaf of `tree` together (`optax.global_norm` in float32)."""
  return optax.global_norm(jax.tree.map(lambda x: x.astype(jnp.float32), tree))


def _monitors(config, representation, z_a, z_b) -> dict[str, jax.Array]:
  z_a = z_a.astype(jnp.float32)
  # C a slab at a time: whole, it is 16 GiB per device at D = 65536.
  summary = monitors.correlation_summary(
    z_a, z_b.astype(jnp.float32), eps=float(config.loss.eps), heatmap_size=HEATMAP_SIZE
  )
  return {
    "embedding_std": jnp.mean(jnp.std(z_a, axis=0)),
    "corr_diag_mean": jnp.mean(summary["diag"]),
    "corr_offdiag_abs_mean": summary["offdiag_abs_mean"],
    "representation_rank": monitors.effective_rank(representation),
    "heatmap_first": summary["heatmap_first"],
    "heatmap_block_rms": summary["heatmap_block_rms"],
  }


def _monitors_when(monitor, config, representation, z_a, z_b) -> dict[str, jax.Array]:
  """`_monitors` when `monitor` is true, zeros of the same shapes otherwise (one program)."""
  args = (jax.lax.stop_gradient(representation), jax.lax.stop_gradient(z_a), z_b)
  monitor_fn = lambda *a: _monitors(config, *a)
  skipped = jax.eval_shape(monitor_fn, *args)
  zeros = lambda *a: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), skipped)
  return jax.lax.cond(jnp.asarray(monitor), monitor_fn, zeros, *args)


def _probe_update(state: TrainState, representation, labels):
  """The online probe's SGD step on stop-gradient representations: (params, opt state, metrics)."""
  features = jax.lax.stop_gradient(representation).astype(jnp.float32)
  labels = labels.astype(jnp.int32)

  def probe_loss_fn(p):
    logits = features @ p["kernel"] + p["bias"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.mean(ce), logits

  (probe_loss, logits), grads = jax.value_and_grad(probe_loss_fn, has_aux=True)(state.probe_params)
  updates, opt_state = state.probe_tx.update(grads, state.probe_opt_state, state.probe_params)
  params = optax.apply_updates(state.probe_params, updates)
  accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
  return params, opt_state, {"probe_loss": probe_loss, "probe_accuracy": accuracy}


def train_step(
  state: TrainState,
  batch: Mapping[str, jax.Array],
  monitor: jax.Array | bool,
  *,
  config,
  views: device_augment.StepViews | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update of the network (and of the online probe) on a global batch.

  Args:
    state: the current `TrainState`.
    batch: `{"view_a": [B, S, S, 3], "view_b": same, "label": [B] int (optional)}`, B the
      global batch (sharded over devices under jit). Views are uint8 crops (normalised here,
      and colour-augmented here with `config.augment.on_device`) or already normalised floats
      (`device_augment.prepare_views`).
    monitor: bool scalar; when true the collapse monitors and heatmaps of C are computed too
      (an eigendecomposition of the representations' Gram matrix: only on the steps that
      log them). A traced argument, so switching it does not recompile.
    config: the run config (static: loss options, online probe).
    views: what the step does to the views, read once by the run's setup
      (`RunSetup.step_views`); default `device_augment.step_views_of(config)`.

  Returns:
    `(new_state, metrics)`: float32 scalars `loss`, `invariance`, `redundancy`, `grad_norm`,
    `param_norm`, (`probe_loss`, `probe_accuracy` with the probe), `embedding_std`,
    `corr_diag_mean`, `corr_offdiag_abs_mean`, `representation_rank` (0 when `monitor` is false)
    and `heatmap_first` / `heatmap_block_rms` [64, 64] pictures of C; with
    `config.optim.skip_nonfinite` also `skipped_steps` and `consecutive_skipped_steps`.
  """
  # Over 60 lines for its docstring; the body is one update in order (loss, optimizer, probe,
  # monitors), clearer read straight through than split.
  model = state.model
  loss_config = config.loss
  # The named scopes label the step's parts in profiles (`barlow_jax.benchmarks.profile`).
  with jax.named_scope("input"):
    views = device_augment.step_views_of(config) if views is None else views
    view_a, view_b = device_augment.step_views(batch, state.step, views)

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    (rep_a, _, z_a, z_b), updates = model.apply(
      variables, view_a, view_b, train=True, mutable=["batch_stats"]
    )
    # The loss and C in float32 whatever the compute dtype (docs/reference.md §3).
    with jax.named_scope("loss"):
      terms = losses.barlow_twins_loss_terms(
        z_a.astype(jnp.float32),
        z_b.astype(jnp.float32),
        lambd=float(loss_config.lambd),
        variant=loss_config.variant,
        method=loss_config.method,
        eps=float(loss_config.eps),
        temperature=float(loss_config.temperature),
      )
    return terms["loss"], (terms, updates["batch_stats"], rep_a, z_a, z_b)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (terms, batch_stats, rep_a, z_a, z_b)), grads = grad_fn(state.params)
  guarded = bool(config.optim.get("skip_nonfinite", False))
  extra = {"loss": loss} if guarded else {}
  with jax.named_scope("optimizer"):
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params, **extra)
    params = optax.apply_updates(state.params, updates)
    metrics = {k: v.astype(jnp.float32) for k, v in terms.items()}
    metrics["grad_norm"] = global_norm(grads)

  probe_params, probe_opt_state = state.probe_params, state.probe_opt_state
  if state.probe_tx is not None and "label" in batch:
    with jax.named_scope("probe"):
      probe_params, probe_opt_state, probe_metrics = _probe_update(state, rep_a, batch["label"])
    metrics.update(probe_metrics)
  if guarded:  # A skipped step (barlow_jax.spike_guard) leaves the whole state as it was.
    skipped = spike_guard.step_skipped(opt_state)
    keep = lambda old, new: jax.tree.map(lambda o, n: jnp.where(skipped, o, n), old, new)
    params, batch_stats = keep(state.params, params), keep(state.batch_stats, batch_stats)
    probe_params = keep(state.probe_params, probe_params)
    probe_opt_state = keep(state.probe_opt_state, probe_opt_state)
    metrics.update(spike_guard.metrics(opt_state))
  metrics["param_norm"] = global_norm(params)

  with jax.named_scope("monitors"):
    metrics.update(_monitors_when(monitor, config, rep_a, z_a, z_b))

  new_state = state.replace(
    step=state.step + 1,
    params=params,
    batch_stats=batch_stats,
    opt_state=opt_state,
    probe_params=probe_params,
    probe_opt_state=probe_opt_state,
  )
  return new_state, metrics


class TracedStep:
  """`train_step` under jit over `mesh`, with a count of its traces (each is a compilation).

  Call it as `step(state, batch, monitor) -> (state, metrics)` with a global batch
  (`parallel.global_batch`); `state` is donated.

  Attributes:
    num_traces: how many times the step was traced (1 in a healthy run).
  """

  def __init__(self, config, mesh: Mesh, state: TrainState, shardings=None, views=None):
    self.num_traces = 0

    def step(state, batch, monitor):
      self.num_traces += 1
      return train_step(state, batch, monitor, config=config, views=views)

    mesh = parallel.auto_mesh(mesh)  # The same layout on an Explicit mesh (parallel.auto_mesh).
    if shardings is None:
      shardings = parallel.state_shardings(
        state, mesh, fsdp_min_size=parallel.fsdp_min_size(config)
      )
    else:
      shardings = train_state.with_static_fields(shardings, state)
    self._fn = jax.jit(
      step,
      in_shardings=(shardings, parallel.batch_sharding(mesh), NamedSharding(mesh, P())),
      out_shardings=(shardings, NamedSharding(mesh, P())),
      donate_argnums=(0,),
    )

  def __call__(self, state, batch, monitor: bool):
    before = self.num_traces
    out = self._fn(*parallel.to_auto((state, batch)), np.bool_(monitor))
    if self.num_traces > before and self.num_traces > 1:
      shapes = jax.tree.map(lambda x: (x.shape, str(x.dtype)), batch)
      logging.warning(
        "train_step compiled again (%d compilations so far) for batch %s: something changed "
        "shape, dtype or sharding between steps; every recompilation costs a full compile.",
        self.num_traces,
        shapes,
      )
    return out

  def lower(self, state, batch, monitor: bool = False):
    """The jitted step lowered for these arguments (`.cost_analysis()`, `.compile()`)."""
    return self._fn.lower(*parallel.to_auto((state, batch)), np.bool_(monitor))


def jit_train_step(
  config, mesh: Mesh, state: TrainState, *, shardings=None, views=None
) -> TracedStep:
  """`train_step` jitted over `mesh` as the trainer runs it (state donated, batch sharded).

  Call it as `step(state, batch, monitor) -> (state, metrics)`; `step.lower(state, batch)` gives
  XLA's view of it; `step.num_traces` counts compilations. `shardings` are the state's
  (`RunSetup.state_shardings` in a run; default: `parallel.state_shardings` from the config),
  `views` the step's view settings (`RunSetup.step_views`; default: from the config).
  """
  return TracedStep(config, mesh, state, shardings, views)

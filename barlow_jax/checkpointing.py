"""The workdir and backbone-directory format: the one module that writes and reads them.

A pretraining workdir:

    config.txt, config.json   the run's resolved config, written with the first checkpoint by
                              the invocation that saved it (a refused start writes nothing)
    checkpoints/<step>/       orbax CheckpointManager of the `TrainState` as a state dict
    pretraining.json          the pretraining's own record: steps done, wall seconds summed over
                              every invocation (compilation included, kNN monitor excluded);
                              `finished` once the last step is saved
    backbone/                 the backbone export (below), at the end
    results.json, results.md  the end-of-run evaluation table
    metrics.jsonl             the logged scalars, a JSON line per write (`barlow_jax.metrics_file`)
    events.out.tfevents.*     TensorBoard scalars and images (clu metric writers)

A backbone directory (`backbone/` of a workdir, or `python -m barlow_jax.convert --to DIR`):
an orbax checkpoint of `{"params": ..., "batch_stats": ...}` of the backbone alone plus
`model_config.json` (the `config.model` keys that rebuild the architecture). The JSON is written
after orbax has committed the arrays, so its presence marks a complete export.

Every restore here names the devices it restores onto: orbax, left to itself, places each array
on the devices recorded at save time, which fails with "Topology mismatch" on any other device
count (a run trained on a pod, evaluated on one GPU). Callers give shardings on their current
devices (`restore_checkpoint(..., shardings=...)`, which is how a caller with sharded parameters
keeps its layout), or read host NumPy arrays (`shardings=None`), whose structure, shapes and
dtypes come from the checkpoint's own metadata.

Paths are `etils.epath.Path`s, so the same calls work on local disks and on remote stores
(gs://); local paths are made absolute (orbax requires it).
"""

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath

from barlow_jax.config_validation import UserError

CHECKPOINTS = "checkpoints"
BACKBONE = "backbone"
MODEL_CONFIG_FILE = "model_config.json"
CONFIG_TEXT = "config.txt"
CONFIG_JSON = "config.json"
PRETRAINING_JSON = "pretraining.json"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"

# A sharding for every leaf, a tree of them, or None for host NumPy arrays.
Shardings = jax.sharding.Sharding | Any | None


def path(location: str | os.PathLike) -> epath.Path:
  """`location` as an `epath.Path`; local paths absolute with `~` expanded."""
  text = os.fspath(location)
  if not text:
    raise ValueError("empty path: give a directory")
  if "://" in text:
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


# ---------------------------------------------------------------------------------------------
# Small files of the workdir.


def write_text(target: str | os.PathLike, text: str) -> None:
  """Writes `text` to `target` whole or not at all (a temporary file renamed over it)."""
  target = path(target)
  tmp = target.parent / f".{target.name}.tmp.{os.getpid()}"
  tmp.write_text(text)
  tmp.replace(target)


def write_json(target: str | os.PathLike, value: Any) -> None:
  """`value` as indented JSON with sorted keys (NumPy / jax scalars as numbers), atomically."""
  write_text(target, json.dumps(value, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(source: str | os.PathLike) -> Any:
  """The JSON at `source`, or None when there is no such file."""
  source = path(source)
  if not source.exists():
    return None
  return json.loads(source.read_text())


def _json_default(value):
  if isinstance(value, np.generic | np.ndarray | jax.Array):
    return np.asarray(value).tolist()
  if isinstance(value, tuple | set):
    return list(value)
  raise TypeError(f"not JSON serialisable: {type(value)}")


# ---------------------------------------------------------------------------------------------
# The workdir itself and its config record.


def prepare_workdir(workdir: str) -> str:
  """Creates `workdir` if needed and checks it is writable; returns it (local: absolute).

  `workdir` is a local directory or a bucket location (gs://bucket/run): every file of the run
  goes through etils.epath, orbax and TensorFlow's file system, which all speak gs://.

  Raises:
    UserError: naming the workdir when it is empty or cannot be written.
  """
  import tensorflow as tf

  if not workdir:
    raise UserError("--workdir is empty: give a directory for the run's checkpoints and logs.")
  if "://" not in workdir:
    workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    if "://" in workdir:
      # Checked first: TensorFlow's gs:// file system hangs making directories in, or closing
      # a file of, a missing bucket. Buckets have no directories to make.
      scheme, rest = workdir.split("://", 1)
      bucket = f"{scheme}://{rest.split('/', 1)[0]}"
      if not epath.Path(bucket).exists():
        raise UserError(
          f"--workdir={workdir}: the bucket {bucket} does not exist or these credentials cannot "
          "see it; create it (gcloud storage buckets create) or fix the name."
        )
    else:
      epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    probe = epath.Path(workdir) / f".write_test.{jax.process_index()}"
    probe.write_text("ok")
    probe.unlink()
  except (OSError, tf.errors.OpError) as e:
    reason = getattr(e, "strerror", None) or getattr(e, "message", None) or str(e)
    raise UserError(
      f"--workdir={workdir} is not a writable directory ({reason}); choose another path, fix its "
      "permissions, or (gs://) check the bucket exists and your credentials may write it."
    ) from e
  return workdir


def check_output_dir(location: str, what: str) -> None:
  """Checks that `location` is a directory or can become one, without creating it.

  Raises:
    UserError: `location` (named as `what`, e.g. "--workdir") is a file, or lies under one.
  """
  if not location:
    raise UserError(f"{what} is empty: give a directory.")
  target = path(location)
  # Object stores have no directories to be in the way (and no root to ask about).
  candidates = (target,) if "://" in os.fspath(location) else (target, *target.parents)
  for candidate in candidates:
    if candidate.exists():
      if not candidate.is_dir():
        where = "is" if candidate == target else f"lies under {candidate}, which is"
        raise UserError(f"{what}={location} {where} a file, not a directory: choose another path.")
      return


def write_config(config, workdir: str | os.PathLike, *, replace: bool = False) -> None:
  """config.txt / config.json of the run (by process 0), written with its first checkpoint.

  The record describes the invocation that wrote the workdir's first checkpoint: the run calls
  this after saving one, with `replace=True` when the workdir held no checkpoint before (a record
  there came from an invocation that never saved one, and is replaced). Otherwise an existing
  record is kept and the keys this invocation changes are logged.
  """
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  write_config_record(text, str(config), workdir, replace=replace)


def write_config_record(
  json_text: str, text: str, workdir: str | os.PathLike, *, replace: bool = False
) -> None:
  """`write_config` of the config's two renderings, made once by the run's setup:
  `json_text` = `config.to_json_best_effort(indent=2, sort_keys=True)`, `text` = `str(config)`."""
  if jax.process_index() != 0:
    return
  json_path = os.path.join(workdir, CONFIG_JSON)
  before = None if replace else read_json(json_path)
  if before is not None:
    changed = _changed_keys(before, json.loads(json_text))
    if changed:
      logging.warning(
        "This invocation's config differs from %s in %s; the file keeps the settings the run "
        "started with.",
        json_path,
        ", ".join(changed[:10]) + (" ..." if len(changed) > 10 else ""),
      )
    return
  write_text(os.path.join(workdir, CONFIG_TEXT), text)
  write_text(json_path, json_text)


def recorded_config(workdir: str | os.PathLike) -> dict | None:
  """The config record (config.json) of a workdir that holds a checkpoint; None when it holds
  none (a new run) or has no record. Reads only: a missing workdir is not created."""
  directory = path(workdir)
  checkpoints = directory / CHECKPOINTS
  if not checkpoints.is_dir() or not any(p.name.isdigit() for p in checkpoints.iterdir()):
    return None
  return read_json(directory / CONFIG_JSON)


def _changed_keys(before, after, prefix: str = "") -> list[str]:
  if isinstance(before, dict) and isinstance(after, dict):
    out = []
    for key in sorted(set(before) | set(after)):
      out += _changed_keys(before.get(key), after.get(key), f"{prefix}{key}.")
    return out
  return [] if before == after else [prefix.rstrip(".")]


# ---------------------------------------------------------------------------------------------
# Training checkpoints.


def checkpoint_manager(
  workdir: str | os.PathLike,
  *,
  max_to_keep: int | None = None,
  create: bool = True,
  asynchronous: bool = True,
):
  """The orbax `CheckpointManager` of `workdir/checkpoints` (create=False: read an existing one).

  Raises:
    ValueError: `create` is False and `workdir/checkpoints` does not exist.
  """
  import orbax.checkpoint as ocp

  directory = path(workdir) / CHECKPOINTS
  if not create and not directory.is_dir():
    raise ValueError(f"{directory} does not exist: not a pretraining workdir")
  options = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep,
    create=create,
    enable_async_checkpointing=asynchronous,
    read_only=not create,
  )
  # The handler named up front lets `item_metadata` read a checkpoint's tree (host restores).
  return ocp.CheckpointManager(
    directory, options=options, item_handlers=ocp.StandardCheckpointHandler()
  )


def save_checkpoint(manager, step: int, tree: Any) -> None:
  """Saves `tree` (nested dicts of arrays, e.g. a flax state dict) as checkpoint `step`.

  Every process calls it (orbax writes each process's shards and commits once).
  """
  import orbax.checkpoint as ocp

  manager.save(int(step), args=ocp.args.StandardSave(tree))


def restore_checkpoint(manager, step: int, target: Any = None, shardings: Shardings = None) -> Any:
  """Checkpoint `step` as arrays on the current devices or as host NumPy arrays.

  Args:
    manager: from `checkpoint_manager`.
    step: a step in `manager.all_steps()`.
    target: the tree to restore into (arrays or `jax.ShapeDtypeStruct`s; its structure, shapes
      and dtypes), e.g. `flax.serialization.to_state_dict(abstract_state)`. None: the
      checkpoint's own structure (read from its metadata).
    shardings: a `jax.sharding.Sharding` for every leaf or a tree of them matching `target`,
      over the devices of THIS run (any count: 8 at save time, 1 now, or the reverse); None:
      host NumPy arrays.

  Returns:
    The restored tree (nested dicts).

  Raises:
    ValueError: `step` is not in the checkpoint directory.
  """
  import orbax.checkpoint as ocp

  steps = sorted(manager.all_steps())
  if int(step) not in steps:
    raise ValueError(f"{manager.directory} holds checkpoint steps {steps}, not {step}")
  if target is None:
    target = _metadata_tree(manager.item_metadata(int(step)))
  abstract = _abstract(target, shardings)
  return manager.restore(int(step), args=ocp.args.StandardRestore(abstract))


def _metadata_tree(metadata) -> Any:
  tree = getattr(metadata, "tree", metadata)
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree)


def _abstract(target: Any, shardings: Shardings) -> Any:
  """`target`'s leaves as NumPy placeholders (host restore) or sharded `ShapeDtypeStruct`s."""
  if shardings is None:
    # An np.ndarray leaf makes orbax restore a NumPy array whatever devices wrote it.
    return jax.tree.map(lambda x: np.empty(np.shape(x), np.dtype(x.dtype)), target)
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, target)
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), target, shardings
  )


def latest_step(workdir: str | os.PathLike) -> int | None:
  """The latest checkpoint step of `workdir` (None: none saved)."""
  manager = checkpoint_manager(workdir, create=False, asynchronous=False)
  try:
    return manager.latest_step()
  finally:
    manager.close()


# ---------------------------------------------------------------------------------------------
# Backbone directories.


def full_model_config(overrides: Mapping) -> dict:
  """`config.model` as a plain dict: the base config's values updated with `overrides`.

  Keys added to `config.model` after a directory was written take their defaults.

  Raises:
    ValueError: `overrides` names a key `config.model` does not have.
  """
  from barlow_jax import config as config_lib

  model_config = config_lib.base_config().model.to_dict()
  unknown = set(overrides) - set(model_config)
  if unknown:
    raise ValueError(f"unknown config.model keys {sorted(unknown)}")
  model_config.update(overrides)
  return model_config


def is_backbone_dir(directory: str | os.PathLike) -> bool:
  """Whether `directory` holds a complete backbone export (its `model_config.json`)."""
  return (path(directory) / MODEL_CONFIG_FILE).exists()


def not_a_backbone_dir(directory: str | os.PathLike) -> str:
  """Why `directory` is not a backbone directory, with the one inside it a workdir has."""
  directory = path(directory)
  text = f"{directory} has no {MODEL_CONFIG_FILE}: not a barlow_jax backbone export."
  if is_backbone_dir(directory / BACKBONE):
    text += f" Did you mean {directory / BACKBONE} (the export of the pretraining workdir)?"
  return text


def save_backbone(
  directory: str | os.PathLike,
  variables: Mapping[str, Any],
  model_config: Mapping[str, Any],
  *,
  overwrite: bool = False,
) -> None:
  """Writes a backbone directory: orbax `{"params", "batch_stats"}`, then `model_config.json`.

  Every process calls it (orbax writes collectively); process 0 writes the JSON.

  Args:
    directory: where to write.
    variables: `{"params": ..., "batch_stats": ...}` of the backbone (jax or NumPy arrays).
    model_config: the `config.model` keys (plain values) that rebuild the architecture.
    overwrite: replace an existing directory (default: refuse).

  Raises:
    ValueError: `directory` exists and `overwrite` is False.
  """
  import orbax.checkpoint as ocp

  directory = path(directory)
  if directory.exists() and not overwrite:
    raise ValueError(f"{directory} already exists: choose a new --to directory or remove it.")
  tree = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory, tree, force=overwrite)
  checkpointer.wait_until_finished()
  checkpointer.close()
  if jax.process_index() == 0:
    write_json(directory / MODEL_CONFIG_FILE, dict(model_config))


def load_backbone(
  directory: str | os.PathLike, *, shardings: Shardings = None
) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads a backbone directory written on any number of devices.

  Args:
    directory: a backbone directory (see the module docstring).
    shardings: a sharding for every leaf, or a tree of them shaped like the variables, on the
      current devices; None (default): host NumPy arrays.

  Returns:
    (variables `{"params", "batch_stats"}`, model config dict as written).

  Raises:
    UserError: `directory` has no `model_config.json` (the message names a workdir's backbone/).
  """
  import orbax.checkpoint as ocp

  directory = path(directory)
  config_file = directory / MODEL_CONFIG_FILE
  if not config_file.exists():
    raise UserError(not_a_backbone_dir(directory))
  model_config = json.loads(config_file.read_text())
  checkpointer = ocp.StandardCheckpointer()
  try:
    target = _metadata_tree(checkpointer.metadata(directory).item_metadata)
    variables = checkpointer.restore(directory, _abstract(target, shardings))
  finally:
    checkpointer.close()
  return dict(variables), model_config


def backbone_from_checkpoint(
  workdir: str | os.PathLike, step: int = -1
) -> tuple[dict[str, Any], dict[str, Any], int]:
  """The backbone's variables in a training checkpoint of `workdir`, as host NumPy arrays.

  Args:
    workdir: a pretraining workdir (`config.json` and `checkpoints/`).
    step: the checkpoint's step; -1: the latest.

  Returns:
    (variables `{"params", "batch_stats"}`, full model config dict (`full_model_config` of the
    run's `config.model`), the step read).

  Raises:
    ValueError: no `config.json`, or no checkpoint `step` (the message lists the steps).
  """
  workdir = path(workdir)
  config = read_json(workdir / CONFIG_JSON)
  if config is None:
    raise ValueError(
      f"{workdir} has {CHECKPOINTS}/ but no {CONFIG_JSON}: not a pretraining workdir"
    )
  model_config = full_model_config(config["model"])
  manager = checkpoint_manager(workdir, create=False, asynchronous=False)
  try:
    steps = sorted(manager.all_steps())
    chosen = steps[-1] if step < 0 and steps else int(step)
    if chosen not in steps:
      raise ValueError(
        f"config.eval.checkpoint_step={step}: {workdir}/{CHECKPOINTS} holds steps {steps}"
      )
    tree = restore_checkpoint(manager, chosen)
  finally:
    manager.close()
  variables = {
    "params": tree["params"]["backbone"],
    "batch_stats": (tree.get("batch_stats") or {}).get("backbone", {}),
  }
  return variables, model_config, chosen

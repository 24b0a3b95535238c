"""Reads a pretraining workdir through every loader of the project (tests/test_checkpointing.py).

    XLA_FLAGS=--xla_force_host_platform_device_count=N python tests/checkpoint_reader.py \
        W OUT.npz [W2 OUT2.npz ...]

For each workdir W, writes each loader's values, flattened, under `<loader>/<leaf path>` into
OUT.npz: the backbone export through `checkpointing`, `evaluation.features` and `train_state`
(host and sharded onto all N devices), the latest training checkpoint through the evaluation
loader and through `train_state.restore_state` onto all N devices, and the `.pth` that the
`python -m barlow_jax.convert --export` command line writes. Run in a process of its own so
that N is its own device count.
"""

import os
import sys

import numpy as np


def _flat(prefix: str, tree, out: dict) -> None:
  import jax

  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    out[prefix + jax.tree_util.keystr(path)] = np.asarray(leaf)


def knn_config(workdir: str):
  """The user-facing `configs/eval_linear.py:digits --config.eval.mode=knn` of `workdir`."""
  from configs import eval_linear

  config = eval_linear.get_config("digits")
  config.eval.mode = "knn"
  config.eval.backbone = workdir
  return config


def read_all(workdir: str, scratch: str) -> dict[str, np.ndarray]:
  """{loader/leaf: value} of `workdir` read on this process's devices, and the kNN top-1 of
  the evaluation command's code path (`evaluate.evaluate`) under "knn_top1"."""
  import flax
  import jax
  import ml_collections
  import torch
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from barlow_jax import checkpointing, convert, data, evaluate, parallel, train_state
  from barlow_jax.evaluation import features as eval_features

  out: dict[str, np.ndarray] = {}
  export = os.path.join(workdir, "backbone")
  mesh = parallel.create_mesh()
  replicated = NamedSharding(mesh, P())

  _flat("checkpointing.load_backbone", checkpointing.load_backbone(export)[0], out)
  sharded, _ = checkpointing.load_backbone(export, shardings=replicated)
  for leaf in jax.tree.leaves(sharded):
    assert leaf.sharding.device_set == set(jax.devices()), leaf.sharding
  _flat("checkpointing.load_backbone(sharded)", sharded, out)
  _flat("train_state.load_exported_backbone", train_state.load_exported_backbone(export)[1], out)
  _flat("features.load_backbone(export)", eval_features.load_backbone(workdir)[1], out)
  step = checkpointing.latest_step(workdir)
  _, from_checkpoint, _ = eval_features.load_backbone(workdir, checkpoint_step=step)
  _flat("features.load_backbone(checkpoint)", from_checkpoint, out)

  config = ml_collections.ConfigDict(checkpointing.read_json(os.path.join(workdir, "config.json")))
  target = jax.eval_shape(
    lambda rng: train_state.create_train_state(
      config,
      rng,
      mesh=mesh,
      steps_per_epoch=data.steps_per_epoch(config),
      num_classes=data.num_classes(config),
    ),
    jax.random.key(0),
  )
  manager = checkpointing.checkpoint_manager(workdir, max_to_keep=int(config.keep_checkpoints))
  try:
    state = train_state.restore_state(manager, target, mesh, step)
  finally:
    manager.close()
  assert state.params["backbone"]["conv1"]["kernel"].sharding.device_set == set(jax.devices())
  _flat("train_state.restore_state", flax.serialization.to_state_dict(state), out)

  pth = os.path.join(scratch, "backbone.pth")
  assert convert.main(["--export", "--from", export, "--to", pth]) == 0
  for key, value in torch.load(pth, weights_only=True).items():
    out[f"convert --export/{key}"] = value.numpy()
  out["knn_top1"] = np.asarray(evaluate.evaluate(knn_config(workdir), scratch)["knn_top1"])
  return out


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  args = sys.argv[1:]
  if not args or len(args) % 2:
    sys.exit(f"usage: {sys.argv[0]} WORKDIR OUT.npz [WORKDIR OUT.npz ...], got {args}")
  # Several workdirs in one process: one interpreter start and one set of compilations.
  for workdir, target in zip(args[::2], args[1::2]):
    scratch = os.path.abspath(target) + ".scratch"  # The .pth export and the kNN's results.
    os.makedirs(scratch)
    values = read_all(workdir, scratch)
    import jax

    values["device_count"] = np.asarray(jax.device_count())
    np.savez(target, **values)

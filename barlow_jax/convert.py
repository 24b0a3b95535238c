"""PyTorch interop: torchvision-layout ResNet state dicts <-> flax variables of `barlow_jax.models`.

Reads the reference's released `resnet50.pth` (a plain torchvision ResNet-50 state dict; `fc.*`
keys, if a state dict has them, are the classifier, which this backbone does not have: they are
accepted and ignored) and its full training checkpoint (`checkpoint.pth`: the state dict under
`"model"`, keys prefixed `module.backbone.` and `module.projector.`; the loss's affine-free
`module.bn.*` running statistics are ignored). Writes the backbone as the training job's
`backbone/` export: an orbax checkpoint of `{"params": ..., "batch_stats": ...}` plus
`model_config.json` (the `config.model` keys that rebuild the architecture).

    python -m barlow_jax.convert --from resnet50.pth --to DIR            # torch -> orbax
    python -m barlow_jax.convert --export --from DIR --to resnet50.pth   # orbax -> torch

Layouts: torch convolution weights are OIHW, flax kernels HWIO; torch Linear weights are [out, in],
flax Dense kernels [in, out]; BN weight/bias/running_mean/running_var are flax
scale/bias/mean/var. torch's `num_batches_tracked` counters have no flax counterpart: they are
ignored on import and written as 0 on export. The architecture (depth, block type, stem, width) is
read off the state dict's shapes; a width multiplier works as long as every tensor agrees with it.

torch is an optional dependency (`pip install .[torch]`), imported only inside these functions.
"""

import io
import logging
import os
import re
import sys
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from etils import epath

from barlow_jax import checkpointing, cli, models
from barlow_jax._deprecations import deprecation_getattr
from barlow_jax.config_validation import UserError

_BN_LEAVES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _import_torch():
  try:
    import torch
  except ImportError as e:
    raise ImportError(
      "barlow_jax.convert needs PyTorch to read or write .pth files: pip install .[torch] "
      "(or pip install torch)."
    ) from e
  return torch


# ------------------------------------------------------------------------------------------------
# Reading torch files.


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a .pth file (`torch.load(weights_only=True)`) into {key: numpy array}.

  A training checkpoint (a dict with a `"model"` entry) gives that entry's state dict.
  """
  torch = _import_torch()
  # Local or gs://, read whole (torch.load wants a seekable file).
  data = io.BytesIO(epath.Path(path).read_bytes())
  try:
    obj = torch.load(data, map_location="cpu", weights_only=True)
  except Exception as e:  # Pickle, zip and torch errors alike: the file is not one torch reads.
    raise UserError(
      f"--from={path} is not a PyTorch file torch.load can read ({type(e).__name__}: "
      f"{str(e).splitlines()[0] if str(e) else ''}); give a .pth state dict or training checkpoint."
    ) from None
  if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
    obj = obj["model"]
  if not isinstance(obj, Mapping):
    raise ValueError(
      f"{path}: expected a state dict (or a checkpoint with 'model'), got {type(obj)}"
    )
  return {k: v.detach().cpu().numpy() for k, v in obj.items() if isinstance(v, torch.Tensor)}


def split_state_dict(
  state_dict: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Splits a state dict into (backbone, projector) parts with their prefixes removed.

  Understands the plain torchvision layout (everything is backbone; `fc.*` dropped) and the
  reference's training layout (`module.backbone.*`, `module.projector.*`, `module.bn.*` dropped;
  the `module.` of DistributedDataParallel is optional). The projector part is empty for a plain
  backbone.
  """
  keys = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state_dict.items()}
  if any(k.startswith(("backbone.", "projector.")) for k in keys):
    backbone, projector, unknown = {}, {}, []
    for k, v in keys.items():
      if k.startswith("backbone."):
        backbone[k[len("backbone.") :]] = v
      elif k.startswith("projector."):
        projector[k[len("projector.") :]] = v
      elif not k.startswith("bn."):  # The loss's affine-free BN: running stats only, unused.
        unknown.append(k)
    if unknown:
      raise ValueError(f"state dict has keys outside backbone/projector/bn: {sorted(unknown)}")
  else:
    backbone, projector = dict(keys), {}
  backbone = {k: v for k, v in backbone.items() if not k.startswith("fc.")}
  return backbone, projector


def infer_model_config(backbone_sd: Mapping[str, np.ndarray], projector_sd=None) -> dict:
  """The `config.model` keys that describe the architecture of a torchvision state dict.

  Returns {"backbone": "ResNet50", "stem": "imagenet", "width": 1.0, ...} (plus "projector"
  and "projector_batch_norm" when a projector state dict is given).
  """
  if "conv1.weight" not in backbone_sd:
    raise ValueError("backbone state dict has no 'conv1.weight': not a torchvision ResNet.")
  stem_kernel = backbone_sd["conv1.weight"].shape[-1]
  stems = {7: "imagenet", 3: "cifar"}
  if stem_kernel not in stems:
    raise ValueError(f"conv1.weight has a {stem_kernel}x{stem_kernel} kernel: expected 7 or 3.")
  blocks = {}
  for key in backbone_sd:
    match = re.match(r"layer(\d)\.(\d+)\.", key)
    if match:
      stage, block = int(match.group(1)), int(match.group(2))
      blocks[stage] = max(blocks.get(stage, 0), block + 1)
  stage_sizes = tuple(blocks.get(i, 0) for i in range(1, 5))
  bottleneck = any(re.match(r"layer\d\.\d+\.conv3\.weight", k) for k in backbone_sd)
  block_cls = models.BottleneckBlock if bottleneck else models.BasicBlock
  name = None
  for candidate, factory in models.BACKBONES.items():
    if (
      factory.keywords["stage_sizes"] == stage_sizes and factory.keywords["block_cls"] is block_cls
    ):
      name = candidate
  if name is None:
    raise ValueError(
      f"state dict has stages {stage_sizes} of {block_cls.__name__}: not one of "
      f"{sorted(models.BACKBONES)}."
    )
  config = {
    "backbone": name,
    "stem": stems[stem_kernel],
    "width": backbone_sd["conv1.weight"].shape[0] / 64,
  }
  if projector_sd:
    linear = sorted(
      (int(k.split(".")[0]), v.shape[0]) for k, v in projector_sd.items() if v.ndim == 2
    )
    config["projector"] = "-".join(str(size) for _, size in linear)
    config["projector_batch_norm"] = any(v.ndim == 1 for v in projector_sd.values())
  return config


# ------------------------------------------------------------------------------------------------
# The key mapping, driven by the flax variable tree of the module.


def _backbone_torch_module(flax_path: tuple[str, ...]) -> str:
  parts = []
  for name in flax_path:
    match = re.fullmatch(r"layer(\d)_(\d+)", name)
    if match:
      parts.append(f"layer{match.group(1)}.{match.group(2)}")
    elif name == "downsample_conv":
      parts.append("downsample.0")
    elif name == "downsample_bn":
      parts.append("downsample.1")
    else:
      parts.append(name)
  return ".".join(parts)


def _projector_torch_module(flax_path: tuple[str, ...], use_batch_norm: bool) -> str:
  # torch's nn.Sequential numbers ReLUs too: Linear, BN, ReLU per hidden layer (Linear, ReLU
  # without BN), then the last Linear.
  (name,) = flax_path
  step = 3 if use_batch_norm else 2
  match = re.fullmatch(r"(linear|bn)(\d+)", name)
  if not match:
    raise ValueError(f"unexpected projector module {name!r}")
  index = int(match.group(2)) * step + (1 if match.group(1) == "bn" else 0)
  return str(index)


def _torch_key_and_layout(collection, path, module_fn):
  module = module_fn(tuple(path[:-1]))
  leaf = path[-1]
  if collection == "params" and leaf == "kernel":
    return f"{module}.weight", "kernel"
  if leaf in _BN_LEAVES:
    return f"{module}.{_BN_LEAVES[leaf]}", "vector"
  raise ValueError(f"no torch name for flax variable {collection}/{'/'.join(path)}")


def _to_flax_layout(array: np.ndarray, layout: str) -> np.ndarray:
  if layout == "kernel" and array.ndim == 4:
    return np.transpose(array, (2, 3, 1, 0))  # OIHW -> HWIO
  if layout == "kernel" and array.ndim == 2:
    return np.transpose(array)  # [out, in] -> [in, out]
  return array


def _to_torch_layout(array: np.ndarray, layout: str) -> np.ndarray:
  if layout == "kernel" and array.ndim == 4:
    return np.transpose(array, (3, 2, 0, 1))  # HWIO -> OIHW
  if layout == "kernel" and array.ndim == 2:
    return np.transpose(array)
  return array


def _flax_leaves(variables_shapes):
  """(collection, path tuple, leaf) for every variable, in a deterministic order."""
  out = []
  for collection in ("params", "batch_stats"):
    flat = jax.tree_util.tree_flatten_with_path(variables_shapes.get(collection, {}))[0]
    for keypath, leaf in flat:
      out.append((collection, tuple(k.key for k in keypath), leaf))
  return out


def _unflatten(items):
  tree = {}
  for collection, path, value in items:
    node = tree.setdefault(collection, {})
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
  return tree


def _from_torch(state_dict, shapes, module_fn, what):
  expected = {}
  for collection, path, leaf in _flax_leaves(shapes):
    key, layout = _torch_key_and_layout(collection, path, module_fn)
    expected[key] = (collection, path, layout, leaf)
  given = {k for k in state_dict if not k.endswith("num_batches_tracked")}
  missing = sorted(set(expected) - given)
  unknown = sorted(given - set(expected))
  if missing or unknown:
    raise ValueError(
      f"{what} state dict does not match the flax module: missing keys {missing}, "
      f"unknown keys {unknown}."
    )
  items, bad_shapes = [], []
  for key, (collection, path, layout, leaf) in expected.items():
    value = _to_flax_layout(np.asarray(state_dict[key]), layout)
    if value.shape != tuple(leaf.shape):
      bad_shapes.append(f"{key}: torch {value.shape} (flax layout) vs flax {tuple(leaf.shape)}")
      continue
    items.append((collection, path, jnp.asarray(value, dtype=leaf.dtype)))
  if bad_shapes:
    raise ValueError(
      f"{what} state dict shapes differ from the flax module (depth, stem or width?): "
      + "; ".join(bad_shapes)
    )
  return _unflatten(items)


def _to_torch(variables, module_fn):
  torch = _import_torch()
  state_dict = {}
  for collection, path, leaf in _flax_leaves(variables):
    key, layout = _torch_key_and_layout(collection, path, module_fn)
    array = np.ascontiguousarray(_to_torch_layout(np.asarray(leaf), layout))
    state_dict[key] = torch.from_numpy(array.copy())
    if collection == "batch_stats" and key.endswith("running_var"):
      counter = key[: -len("running_var")] + "num_batches_tracked"
      state_dict[counter] = torch.tensor(0, dtype=torch.int64)
  return state_dict


def _variable_shapes(module, x_shape):
  x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), x)


def backbone_from_torch(state_dict: Mapping[str, np.ndarray], backbone: models.ResNet) -> dict:
  """Torchvision ResNet state dict (numpy or torch values) -> {"params", "batch_stats"}.

  `backbone` is the flax `ResNet` the variables are for; it fixes the expected keys and shapes.
  Raises ValueError listing missing and unknown keys (`fc.*` and `num_batches_tracked` are
  ignored), or the tensors whose shapes differ.
  """
  state_dict = {k: _numpy(v) for k, v in state_dict.items() if not k.startswith("fc.")}
  shapes = _variable_shapes(backbone, (1, 32, 32, 3))
  return _from_torch(state_dict, shapes, _backbone_torch_module, "backbone")


def projector_from_torch(
  state_dict: Mapping[str, np.ndarray], projector: models.Projector, in_features: int
) -> dict:
  """The reference's projector (nn.Sequential, keys "0.weight", "1.running_mean", ...) -> flax."""
  state_dict = {k: _numpy(v) for k, v in state_dict.items()}
  shapes = _variable_shapes(projector, (1, in_features))
  module_fn = lambda path: _projector_torch_module(path, projector.use_batch_norm)
  return _from_torch(state_dict, shapes, module_fn, "projector")


def backbone_to_torch(variables: Mapping) -> dict:
  """Flax backbone {"params", "batch_stats"} -> torchvision state dict of torch tensors.

  No `fc.*` keys (the backbone has no classifier: load with `strict=False` into a torchvision
  model, or drop its `fc`); `num_batches_tracked` is 0.
  """
  return _to_torch(variables, _backbone_torch_module)


def projector_to_torch(variables: Mapping, *, use_batch_norm: bool = True) -> dict:
  """Flax projector variables -> the reference's nn.Sequential state dict."""
  return _to_torch(variables, lambda path: _projector_torch_module(path, use_batch_norm))


def _numpy(value):
  if hasattr(value, "detach"):
    value = value.detach().cpu().numpy()
  return np.asarray(value)


# ------------------------------------------------------------------------------------------------
# The backbone/ directory: orbax checkpoint + model_config.json.

# The format is `barlow_jax.checkpointing`'s; the names this module had for it are deprecated.
_DEPRECATED = {
  "MODEL_CONFIG_FILE": "barlow_jax.checkpointing.MODEL_CONFIG_FILE",
  "full_model_config": "barlow_jax.checkpointing.full_model_config",
  "load_backbone": "barlow_jax.checkpointing.load_backbone",
  "save_backbone": "barlow_jax.checkpointing.save_backbone",
}
__getattr__ = deprecation_getattr(__name__, _DEPRECATED)


def torch_file_to_backbone_dir(path: str, directory: str) -> dict:
  """`resnet50.pth` (or a training checkpoint) -> backbone/ directory. Returns the model config."""
  import ml_collections

  if epath.Path(directory).exists():
    raise UserError(f"--to={directory} already exists: choose a new --to directory or remove it.")
  backbone_sd, projector_sd = split_state_dict(load_torch_state_dict(path))
  model_config = checkpointing.full_model_config(infer_model_config(backbone_sd, projector_sd))
  backbone = models.create_model(ml_collections.ConfigDict(model_config)).backbone
  variables = backbone_from_torch(backbone_sd, backbone)
  checkpointing.save_backbone(directory, variables, model_config)
  return model_config


def backbone_dir_to_torch_file(directory: str, path: str) -> None:
  """backbone/ directory -> a torchvision state dict saved with torch.save (no `fc.*`)."""
  torch = _import_torch()
  variables, model_config = checkpointing.load_backbone(directory)
  if model_config.get("standardize_input"):
    # The weights are exact; the per-image standardisation in front of them is not a layer
    # torchvision has, so say what a torch user must add rather than export a silent mismatch.
    logging.warning(
      "%s was trained with config.model.standardize_input=True: torchvision's ResNet has no such "
      "layer. Feed the torch model barlow_jax.models.standardize_images(x, %s) of your normalised "
      "NHWC images (per image: subtract the per-channel mean, divide by the RMS deviation + eps).",
      directory,
      model_config.get("input_epsilon", 0.2),
    )
  # Local or gs://; torch.save writes memoryviews, which TensorFlow's gs:// files refuse.
  data = io.BytesIO()
  torch.save(backbone_to_torch(variables), data)
  epath.Path(path).write_bytes(data.getvalue())


def check_paths(source: str, target: str, *, export: bool) -> None:
  """The command line's paths, checked before anything is read or written.

  Import (`export` False): `source` an existing file, `target` a directory that does not exist
  yet. Export: `source` a backbone directory (for a pretraining workdir, the message names its
  backbone/), `target` a file path (not a directory) whose parent is a directory.

  Raises:
    UserError: naming the flag and the path.
  """
  src = epath.Path(source)
  if not src.exists():
    raise UserError(f"--from={source} does not exist.")
  if not export:
    if src.is_dir():
      hint = (
        " It is a backbone directory: add --export to write it as a .pth file."
        if checkpointing.is_backbone_dir(source)
        else ""
      )
      raise UserError(f"--from={source} is a directory, not a .pth file.{hint}")
    if epath.Path(target).exists():
      raise UserError(f"--to={target} already exists: choose a new --to directory or remove it.")
    checkpointing.check_output_dir(target, "--to")
    return
  if not src.is_dir():
    raise UserError(
      f"--from={source} is a file: --export reads a backbone directory (a workdir's backbone/); "
      "without --export, --from takes a .pth file."
    )
  if not checkpointing.is_backbone_dir(source):
    raise UserError("--from=" + checkpointing.not_a_backbone_dir(source))
  if epath.Path(target).is_dir():
    raise UserError(
      f"--to={target} is a directory: --export writes one .pth file; give its path, e.g. "
      f"--to={epath.Path(target) / 'resnet50.pth'}."
    )
  checkpointing.check_output_dir(os.fspath(epath.Path(target).parent), "the parent of --to")


def torch_backbone(path: str):
  """An exported backbone as a PyTorch module with its weights loaded, in eval mode.

  `path`: a `backbone/` directory (its `model_config.json` gives depth, stem, width and
  `standardize_input`) or a `.pth` state dict from `--export` or the reference (the architecture
  is read off the shapes; a `.pth` does not record `standardize_input`, so use the directory for
  backbones trained with it). Returns `barlow_jax.torch_resnet.ResNet`: NCHW float images,
  normalised as in training -> [N, num_features] features, equal to the JAX backbone's
  (`BarlowTwins.represent`, train=False) to float32 rounding. Needs torch (`pip install .[torch]`).

  Raises:
    ValueError: a state dict that is not a torchvision-layout ResNet.
  """
  torch = _import_torch()
  from barlow_jax import torch_resnet

  if epath.Path(path, checkpointing.MODEL_CONFIG_FILE).exists():
    variables, model_config = checkpointing.load_backbone(path)
    state_dict = backbone_to_torch(variables)
  else:
    state_dict, _ = split_state_dict(load_torch_state_dict(path))
    model_config = checkpointing.full_model_config(infer_model_config(state_dict))
    state_dict = {k: torch.as_tensor(np.asarray(v)) for k, v in state_dict.items()}
  net = torch_resnet.ResNet(
    model_config["backbone"],
    width=float(model_config["width"]),
    stem=model_config["stem"],
    standardize_input=bool(model_config.get("standardize_input", False)),
    input_epsilon=float(model_config.get("input_epsilon", 0.2)),
  )
  state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
  net.load_state_dict(state_dict, strict=True)
  return net.eval()


def define_flags(flag_values: flags.FlagValues) -> None:
  """The command line's flags (`barlow_jax.cli.Command`)."""
  flags.DEFINE_string("from", None, ".pth file (or DIR with --export)", flag_values=flag_values)
  flags.DEFINE_string("to", None, "output DIR (or .pth with --export)", flag_values=flag_values)
  flags.DEFINE_bool("export", False, "flax backbone DIR -> torch .pth", flag_values=flag_values)
  flags.mark_flags_as_required(["from", "to"], flag_values=flag_values)


def _command(flag_values: flags.FlagValues, argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  source, target = flag_values["from"].value, flag_values["to"].value
  check_paths(source, target, export=flag_values.export)
  if flag_values.export:
    backbone_dir_to_torch_file(source, target)
    print(f"wrote {target}")
  else:
    model_config = torch_file_to_backbone_dir(source, target)
    print(
      f"wrote {target}: {model_config['backbone']}, stem {model_config['stem']}, "
      f"width {model_config['width']}"
    )
  return 0


COMMAND = cli.Command("python -m barlow_jax.convert", define_flags, _command, __doc__)


def main(argv: list[str] | None = None) -> int:
  """The command line in-process: `argv` without the program name (default `sys.argv[1:]`)."""
  return COMMAND(["", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
  COMMAND.run()

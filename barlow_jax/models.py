"""The Barlow Twins network (flax linen): a `barlow_jax.resnet` backbone, the projector, and the
module applying both to a pair of views; `create_model` builds it from `config.model`. The
evaluation's fine-tuning network, `Classifier` (backbone + linear head), is here too.

The projector follows the reference (docs/reference.md §2): `Linear(no bias) -> BN -> ReLU` per
hidden layer, torch.nn.Linear's initialisation, the backbone's BatchNorm settings. The backbone's
names are re-exported here: `barlow_jax.models.ResNet50` and the rest keep working.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from barlow_jax import resnet
from barlow_jax.resnet import (  # noqa: F401  (the public names of models before the split)
  BACKBONES,
  BasicBlock,
  BatchNorm,
  BottleneckBlock,
  ModuleDef,
  ResNet,
  ResNet18,
  ResNet34,
  ResNet50,
  ResNet101,
  ResNet152,
  conv_kernel_init,
  linear_kernel_init,
  standardize_images,
)


def parse_projector_sizes(spec: str | Sequence[int]) -> tuple[int, ...]:
  """The reference's projector string "8192-8192-8192" -> (8192, 8192, 8192) (output sizes).

  A sequence of ints is accepted as is. The input size is the backbone's and is not part of it.
  """
  if isinstance(spec, str):
    try:
      sizes = tuple(int(s) for s in spec.split("-"))
    except ValueError:
      sizes = ()
  else:
    sizes = tuple(int(s) for s in spec)
  if not sizes or any(s <= 0 for s in sizes):
    raise ValueError(
      f"projector={spec!r} (config.model.projector): give positive layer sizes joined by '-', "
      "e.g. '8192-8192-8192'."
    )
  return sizes


class Projector(nn.Module):
  """The projector: `Dense(no bias) -> BN -> ReLU` per hidden size, then a final `Dense(no bias)`.

  For sizes (8192, 8192, 8192) on 2048 features this is the reference's projector: 150,994,944
  weights and 2 x 2 x 8192 BN parameters. Submodules are `linear{i}` and `bn{i}` (i = layer index).

  Attributes:
    sizes: output size of every layer; the last one is the embedding size D.
    use_batch_norm: False drops the hidden BNs (the paper's "no BN in projector" ablation).
    dtype, param_dtype, bn_momentum, bn_epsilon, axis_name: as in `ResNet`.
  """

  sizes: Sequence[int]
  use_batch_norm: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    """Maps representations [N, F] to float32 embeddings [N, sizes[-1]]."""
    dense = resnet.without_bias(nn.Dense, self, resnet.linear_kernel_init)
    for i, size in enumerate(self.sizes[:-1]):
      x = dense(size, name=f"linear{i}")(x)
      if self.use_batch_norm:
        x = resnet.batch_norm(self, train)(name=f"bn{i}")(x)
      x = nn.relu(x)
    x = dense(self.sizes[-1], name=f"linear{len(self.sizes) - 1}")(x)
    return x.astype(jnp.float32)


class BarlowTwins(nn.Module):
  """Backbone + projector applied to a pair of views.

  Each view goes through the network in its own pass, as in the reference (which calls the backbone
  on y1, then on y2): every BatchNorm normalises a view with that view's own batch statistics, and
  the running averages are updated twice per step, first with view A's statistics, then with
  view B's. One pass over the concatenated views would be cheaper to launch but would normalise
  with statistics mixed over both views, which changes what the network computes in training.

  The paper's asymmetry ablations (docs/reference.md §1: stop-gradient 70.5, predictor 70.2, both
  61.3) are options: `predictor`, an MLP applied to branch A's embedding only (BYOL/SimSiam style),
  and `stop_gradient_b`, no gradient through branch B. Both are off in the reference method.
  """

  backbone: nn.Module
  projector: nn.Module
  predictor: nn.Module | None = None
  stop_gradient_b: bool = False

  def __call__(self, view_a, view_b, train: bool):
    """Two views [N, H, W, C] -> (representation_a, representation_b, embedding_a, embedding_b).

    Representations are [N, backbone.num_features], embeddings [N, projector.sizes[-1]], float32.
    """
    representation_a = self.backbone(view_a, train=train)
    embedding_a = self.projector(representation_a, train=train)
    if self.predictor is not None:
      embedding_a = self.predictor(embedding_a, train=train)
    representation_b = self.backbone(view_b, train=train)
    embedding_b = self.projector(representation_b, train=train)
    if self.stop_gradient_b:
      embedding_b = jax.lax.stop_gradient(embedding_b)
    return representation_a, representation_b, embedding_a, embedding_b

  def represent(self, x, train: bool = False):
    """The backbone alone: images [N, H, W, C] -> representations [N, num_features]."""
    return self.backbone(x, train=train)


def backbone_features(model_config) -> int:
  """Representation size of the backbone `config.model` describes (2048 for ResNet-50)."""
  return _backbone_from_config(model_config, axis_name=None).num_features


def _backbone_from_config(model_config, axis_name):
  name = model_config.backbone
  if name not in BACKBONES:
    raise ValueError(
      f"config.model.backbone={name!r} is not a known backbone: use one of {sorted(BACKBONES)}."
    )
  if model_config.stem not in ("imagenet", "cifar"):
    raise ValueError(f"config.model.stem={model_config.stem!r}: use 'imagenet' or 'cifar'.")
  if not 0 < model_config.width < float("inf"):
    raise ValueError(f"config.model.width={model_config.width} must be positive and finite.")
  input_epsilon = float(model_config.get("input_epsilon", 0.2))
  if not input_epsilon >= 0:
    raise ValueError(
      f"config.model.input_epsilon={input_epsilon} must be >= 0 (it is added to each image's "
      "deviation under config.model.standardize_input; 0.2 is the default)."
    )
  return BACKBONES[name](
    stem=model_config.stem,
    width=float(model_config.width),
    zero_init_residual=bool(model_config.zero_init_residual),
    standardize_input=bool(model_config.get("standardize_input", False)),
    input_epsilon=input_epsilon,
    dtype=_dtype(model_config.dtype),
    param_dtype=jnp.float32,
    bn_momentum=float(model_config.bn_momentum),
    bn_epsilon=float(model_config.bn_epsilon),
    axis_name=axis_name,
  )


def _dtype(name):
  try:
    return jnp.dtype(name)
  except TypeError as e:
    raise ValueError(
      f"config.model.dtype={name!r} is not a dtype: use 'float32' or 'bfloat16'."
    ) from e


def create_model(model_config, *, axis_name: str | None = None) -> BarlowTwins:
  """Builds `BarlowTwins` from `config.model` (keys in barlow_jax/config.py).

  `axis_name`: set it (to "data") only when the model is applied inside `shard_map`; under sharded
  `jit` leave it None, the batch statistics are global anyway.
  """
  backbone = _backbone_from_config(model_config, axis_name)
  mlp = functools.partial(
    Projector,
    use_batch_norm=bool(model_config.projector_batch_norm),
    dtype=_dtype(model_config.dtype),
    param_dtype=jnp.float32,
    bn_momentum=float(model_config.bn_momentum),
    bn_epsilon=float(model_config.bn_epsilon),
    axis_name=axis_name,
  )
  projector_sizes = parse_projector_sizes(model_config.projector)
  predictor = None
  predictor_spec = model_config.get("predictor", "")
  if predictor_spec:
    embedding = projector_sizes[-1]
    if predictor_spec == "auto":
      predictor_sizes = (embedding, embedding)
    else:
      predictor_sizes = parse_projector_sizes(predictor_spec)
    if predictor_sizes[-1] != embedding:
      raise ValueError(
        f"config.model.predictor={predictor_spec!r} must end in the embedding size {embedding} "
        f"(the last size of config.model.projector={model_config.projector!r}), or be 'auto'."
      )
    predictor = mlp(sizes=predictor_sizes)
  return BarlowTwins(
    backbone=backbone,
    projector=mlp(sizes=projector_sizes),
    predictor=predictor,
    stop_gradient_b=bool(model_config.get("stop_gradient_b", False)),
  )


# The reference's head initialisation (reference evaluate.py: `fc.weight.data.normal_(mean=0.0,
# std=0.01)`, `fc.bias.data.zero_()`), as a flax initializer for heads inside modules.
linear_head_kernel_init = nn.initializers.normal(0.01)


class Classifier(nn.Module):
  """Backbone + one linear head (weights N(0, 0.01), bias 0): images -> [N, num_classes] logits.

  The network `barlow_jax.evaluation.finetune` fine-tunes (semi-supervised evaluation, the
  supervised baseline). Variables: {"params": {"backbone", "head"}, "batch_stats": {"backbone"}}.

  Attributes:
    backbone: a module whose `__call__(x, train)` gives [N, F] features (a `ResNet`).
    num_classes: C, the width of the logits (float32).
  """

  backbone: nn.Module
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool):
    features = self.backbone(x, train=train).astype(jnp.float32)
    head = nn.Dense(self.num_classes, kernel_init=linear_head_kernel_init, name="head")
    return head(features)

"""The Barlow Twins network: a torchvision-layout ResNet backbone and the projector (flax linen).

Everything here matches the reference (docs/reference.md §2): ResNet v1.5 (stride on the 3x3 conv of
a bottleneck), convolutions without bias, torchvision's initialisation (convolutions Kaiming-normal
with fan-out, BN scale 1 and offset 0, the last BN of every residual block zero-initialised),
BatchNorm momentum 0.9 in flax's convention (torch 0.1) and epsilon 1e-5, no classifier.
Submodules carry torchvision's names (`conv1`, `bn1`, `layer1_0/conv1`, `layer1_0/downsample_conv`,
...) so that `barlow_jax.convert` maps weights one to one.

Batch statistics: under `jit` with batch-sharded inputs, BatchNorm's statistics are already those of
the global batch (XLA inserts the all-reduce). Inside `shard_map`, build the modules with
`axis_name="data"` so that BatchNorm averages its statistics over that axis. One difference with
torch that only touches the running averages: flax updates `var` with the biased batch variance,
torch with the unbiased one (a factor n / (n - 1), negligible at the batch sizes used here).

Layout is NHWC; inputs are float images, already normalised.
"""

import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Any

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), an untruncated normal with
# variance 2 / fan_out, fan_out = out_channels * kernel area.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch.nn.Linear's default: kaiming_uniform_(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
# whose variance 1 / (3 fan_in) is variance_scaling(1/3, fan_in, uniform).
linear_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

# Every BatchNorm of the project: batch variance in two passes, mean((x - mean)^2), as torch does.
# flax's default one-pass E[x^2] - E[x]^2 cancels catastrophically in float32 once |mean| / std
# reaches ~1e3 (the projector's first BN then errs by ~40%, without any NaN to show it).
BatchNorm = functools.partial(nn.BatchNorm, use_fast_variance=False)


def _channels(base: int, width: float) -> int:
  return max(1, int(round(base * width)))


def _without_bias(layer, module: nn.Module, kernel_init):
  """`layer` (nn.Conv / nn.Dense) without bias, in `module`'s dtype and param_dtype."""
  return functools.partial(
    layer,
    use_bias=False,
    dtype=module.dtype,
    param_dtype=module.param_dtype,
    kernel_init=kernel_init,
  )


def _batch_norm(module: nn.Module, train: bool):
  """`BatchNorm` with `module`'s bn_momentum, bn_epsilon, axis_name, dtype and param_dtype."""
  return functools.partial(
    BatchNorm,
    use_running_average=not train,
    momentum=module.bn_momentum,
    epsilon=module.bn_epsilon,
    axis_name=module.axis_name,
    dtype=module.dtype,
    param_dtype=module.param_dtype,
  )


def _shortcut(block, x):
  """torchvision's `downsample` (1x1 strided conv + BN) where the block changes shape, else x.

  Called inside a block's compact `__call__`, so the submodules are the block's own.
  """
  if block.strides == 1 and x.shape[-1] == block.planes * block.expansion:
    return x
  out_channels = block.planes * block.expansion
  strides = (block.strides, block.strides)
  identity = block.conv(out_channels, (1, 1), strides, "VALID", name="downsample_conv")(x)
  return block.norm(name="downsample_bn")(identity)


class _ResidualBlock(nn.Module):
  """The fields of torchvision's residual blocks: `planes` channels (times `expansion` out),
  `strides` on the block's strided convolution, its conv / BatchNorm partials, and whether the
  branch's last BN starts at scale 0 (`zero_init_residual`, the reference's torchvision option)."""

  planes: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  zero_init_residual: bool = True

  expansion: ClassVar[int] = 1

  @property
  def last_bn_init(self):
    return nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones


class BasicBlock(_ResidualBlock):
  """torchvision's BasicBlock: two 3x3 convolutions (ResNet-18 / 34)."""

  @nn.compact
  def __call__(self, x):
    y = self.conv(
      self.planes, (3, 3), (self.strides, self.strides), ((1, 1), (1, 1)), name="conv1"
    )(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.planes, (3, 3), (1, 1), ((1, 1), (1, 1)), name="conv2")(y)
    y = self.norm(name="bn2", scale_init=self.last_bn_init)(y)
    return nn.relu(y + _shortcut(self, x))


class BottleneckBlock(_ResidualBlock):
  """torchvision's Bottleneck, v1.5: 1x1 -> 3x3 (carries the stride) -> 1x1 with 4x expansion."""

  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.planes, (1, 1), (1, 1), "VALID", name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(
      self.planes, (3, 3), (self.strides, self.strides), ((1, 1), (1, 1)), name="conv2"
    )(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(self.planes * self.expansion, (1, 1), (1, 1), "VALID", name="conv3")(y)
    y = self.norm(name="bn3", scale_init=self.last_bn_init)(y)
    return nn.relu(y + _shortcut(self, x))


class ResNet(nn.Module):
  """ResNet v1.5 backbone in torchvision's layout, without the classifier.

  Attributes:
    stage_sizes: number of blocks in each of the four stages ((3, 4, 6, 3) for ResNet-50).
    block_cls: `BasicBlock` or `BottleneckBlock`.
    stem: "imagenet" (7x7/2 convolution + 3x3/2 max-pool) or "cifar" (3x3/1 convolution, no pool).
    width: channel multiplier; 1.0 gives stages of 64-128-256-512 planes, 0.25 gives 16-32-64-128.
    zero_init_residual: start the last BN scale of every block at 0 (each block starts as identity).
    standardize_input: first subtract each image's per-channel mean over its pixels and divide by
      its root-mean-square deviation over pixels and channels (plus `input_epsilon`): a fixed,
      parameter-free instance normalisation. It removes an image's flat colour and its global
      contrast, which matters where those vary wildly between images and carry no class (the
      cluttered digits); off in the reference. Torch's torchvision ResNet has no such layer, so
      weights trained with it do not transfer to torch as is.
    input_epsilon: added to the deviation, in the units of the (already normalised) input.
    dtype: compute dtype (e.g. jnp.bfloat16); BN statistics are still reduced in float32.
    param_dtype: dtype of the parameters and batch statistics.
    bn_momentum: flax convention, running = momentum * running + (1 - momentum) * batch (torch 0.1).
    bn_epsilon: BatchNorm epsilon (torch's 1e-5).
    axis_name: mapped axis over which BatchNorm averages its statistics (inside `shard_map`/`pmap`);
      None under plain or sharded `jit`.
  """

  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  stem: str = "imagenet"
  width: float = 1.0
  zero_init_residual: bool = True
  standardize_input: bool = False
  input_epsilon: float = 0.2
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  axis_name: str | None = None

  @property
  def num_features(self) -> int:
    """Size of the representation: 2048 for ResNet-50 at width 1, 512 for ResNet-18."""
    return _channels(64 * 2 ** (len(self.stage_sizes) - 1), self.width) * self.block_cls.expansion

  @nn.compact
  def __call__(self, x, train: bool):
    """Maps images [N, H, W, C] (NHWC, normalised) to float32 features [N, num_features].

    `train=True` normalises with the batch statistics and updates `batch_stats` (call `apply`
    with `mutable=["batch_stats"]`); `train=False` uses the running averages.
    """
    if self.stem not in ("imagenet", "cifar"):
      raise ValueError(f"ResNet stem={self.stem!r} (config.model.stem): use 'imagenet' or 'cifar'.")
    if not 0 < self.width < float("inf"):
      raise ValueError(
        f"ResNet width={self.width} (config.model.width) must be positive and finite."
      )
    if x.ndim != 4:
      raise ValueError(f"ResNet input x must be NHWC images [N, H, W, C], got shape {x.shape}.")
    conv = _without_bias(nn.Conv, self, conv_kernel_init)
    norm = _batch_norm(self, train)
    if self.standardize_input:
      x = standardize_images(x, self.input_epsilon)
    stem_channels = _channels(64, self.width)
    # Explicit torch paddings: "SAME" would pad a stride-2 conv asymmetrically and shift the grid.
    if self.stem == "imagenet":
      x = conv(stem_channels, (7, 7), (2, 2), ((3, 3), (3, 3)), name="conv1")(x)
      x = nn.relu(norm(name="bn1")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      x = conv(stem_channels, (3, 3), (1, 1), ((1, 1), (1, 1)), name="conv1")(x)
      x = nn.relu(norm(name="bn1")(x))
    for i, num_blocks in enumerate(self.stage_sizes):
      planes = _channels(64 * 2**i, self.width)
      for j in range(num_blocks):
        x = self.block_cls(
          planes=planes,
          strides=2 if i > 0 and j == 0 else 1,
          conv=conv,
          norm=norm,
          zero_init_residual=self.zero_init_residual,
          name=f"layer{i + 1}_{j}",
        )(x)
    # Pool in float32: a bf16 mean over 49 (or 1024) positions loses digits the loss would see.
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def standardize_images(x: jax.Array, epsilon: float) -> jax.Array:
  """Per image: subtract the per-channel mean over pixels, divide by the RMS deviation + epsilon.

  One scale for all channels keeps their relative contrast (a channel in which the digit and the
  background agree stays flat instead of having its noise blown up to unit variance).
  """
  x32 = x.astype(jnp.float32)
  centred = x32 - jnp.mean(x32, axis=(1, 2), keepdims=True)
  deviation = jnp.sqrt(jnp.mean(jnp.square(centred), axis=(1, 2, 3), keepdims=True))
  return (centred / (deviation + epsilon)).astype(x.dtype)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=BottleneckBlock)
ResNet152 = functools.partial(ResNet, stage_sizes=(3, 8, 36, 3), block_cls=BottleneckBlock)

BACKBONES = {
  "ResNet18": ResNet18,
  "ResNet34": ResNet34,
  "ResNet50": ResNet50,
  "ResNet101": ResNet101,
  "ResNet152": ResNet152,
}


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
    dense = _without_bias(nn.Dense, self, linear_kernel_init)
    for i, size in enumerate(self.sizes[:-1]):
      x = dense(size, name=f"linear{i}")(x)
      if self.use_batch_norm:
        x = _batch_norm(self, train)(name=f"bn{i}")(x)
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

"""The Barlow Twins backbone: a torchvision-layout ResNet (flax linen); `barlow_jax.models` adds the
projector and the two-view network.

Everything here (and in the projector) matches the reference (docs/reference.md §2): ResNet v1.5
(stride on the 3x3 conv of a bottleneck), convolutions without bias, torchvision's initialisation
(convolutions Kaiming-normal with fan-out, BN scale 1 and offset 0, the last BN of every residual
block zero-initialised), BatchNorm momentum 0.9 in flax's convention (torch 0.1) and epsilon 1e-5,
no classifier.
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


def without_bias(layer, module: nn.Module, kernel_init):
  """`layer` (nn.Conv / nn.Dense) without bias, in `module`'s dtype and param_dtype."""
  return functools.partial(
    layer,
    use_bias=False,
    dtype=module.dtype,
    param_dtype=module.param_dtype,
    kernel_init=kernel_init,
  )


def batch_norm(module: nn.Module, train: bool):
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
    conv = without_bias(nn.Conv, self, conv_kernel_init)
    norm = batch_norm(self, train)
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

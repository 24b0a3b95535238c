"""The barlow_jax backbone as a PyTorch module: torchvision's ResNet layout with the options the
project trains (CIFAR stem, width multiplier, per-image input standardisation), self-contained
(torchvision is not needed: its PyPI wheels pin a torch of their own).

    from barlow_jax import convert
    net = convert.torch_backbone("run/backbone")   # or an exported resnet.pth; eval mode
    features = net(images_nchw)                    # [N, num_features] float32

`ResNet(name, width, stem=...)` builds the network with torchvision's initialisation; its
`state_dict()` keys are torchvision's (`conv1.weight`, `layer1.0.bn1.running_mean`, ...), which is
the layout `barlow_jax.convert` exports, so a torchvision ResNet of the same depth loads the same
file where width is 1 and the stem is ImageNet's. Inputs are NCHW float images, normalised as for
training (`config.augment.mean` / `std`).
"""

import torch
from torch import nn

# (block, blocks per stage) of torchvision's ResNets.
_ARCHS = {
  "ResNet18": ("basic", (2, 2, 2, 2)),
  "ResNet34": ("basic", (3, 4, 6, 3)),
  "ResNet50": ("bottleneck", (3, 4, 6, 3)),
  "ResNet101": ("bottleneck", (3, 4, 23, 3)),
  "ResNet152": ("bottleneck", (3, 8, 36, 3)),
}


def _channels(base: int, width: float) -> int:
  return max(1, int(round(base * width)))


class BasicBlock(nn.Module):
  """torchvision's BasicBlock (ResNet-18 / 34)."""

  expansion = 1

  def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
  """torchvision's Bottleneck, v1.5: the stride is on the 3x3 convolution."""

  expansion = 4

  def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * self.expansion)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(nn.Module):
  """torchvision's ResNet with `fc = nn.Identity()` (the reference's backbone), with the options
  of `barlow_jax.resnet.ResNet`: [N, 3, H, W] -> [N, 512 * expansion * width] float features.

  Args:
    name: "ResNet18" / "ResNet34" / "ResNet50" / "ResNet101" / "ResNet152", or the depth (50).
    width: channel multiplier (config.model.width; 1.0 = torchvision).
    zero_init_residual: zero the scale of the last BN of every residual block (the reference's
      `torchvision.models.resnet50(zero_init_residual=True)`).
    stem: config.model.stem: "imagenet" (7x7/2 conv + 3x3/2 max-pool) or "cifar" (3x3/1 conv,
      no pool).
    standardize_input: config.model.standardize_input: per image, subtract the per-channel mean
      over pixels, divide by the RMS deviation + `input_epsilon` (`resnet.standardize_images`).
    input_epsilon: config.model.input_epsilon.

  Raises:
    ValueError: an unknown depth or stem, or a width that is not positive.
  """

  def __init__(
    self,
    name: str | int = "ResNet50",
    width: float = 1.0,
    zero_init_residual: bool = True,
    *,
    stem: str = "imagenet",
    standardize_input: bool = False,
    input_epsilon: float = 0.2,
  ):
    super().__init__()
    name = f"ResNet{name}" if isinstance(name, int) else name
    if name not in _ARCHS:
      raise ValueError(f"backbone {name!r} is not a torchvision ResNet: use one of {list(_ARCHS)}")
    if stem not in ("imagenet", "cifar"):
      raise ValueError(f"stem={stem!r} (config.model.stem): use 'imagenet' or 'cifar'.")
    if not 0 < width < float("inf"):
      raise ValueError(f"width={width} (config.model.width) must be positive and finite.")
    kind, layers = _ARCHS[name]
    block = BasicBlock if kind == "basic" else Bottleneck
    self.standardize_input, self.input_epsilon = standardize_input, input_epsilon
    self.inplanes = _channels(64, width)
    if stem == "imagenet":
      self.conv1 = nn.Conv2d(3, self.inplanes, 7, 2, 3, bias=False)
      self.maxpool = nn.MaxPool2d(3, 2, 1)
    else:
      self.conv1 = nn.Conv2d(3, self.inplanes, 3, 1, 1, bias=False)
      self.maxpool = nn.Identity()
    self.bn1 = nn.BatchNorm2d(self.inplanes)
    self.relu = nn.ReLU(inplace=True)
    for i, (base, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
      stage = self._stage(block, _channels(base, width), blocks, stride=1 if i == 0 else 2)
      setattr(self, f"layer{i + 1}", stage)
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Identity()
    self.num_features = self.inplanes
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
      elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    if zero_init_residual:
      for m in self.modules():
        if isinstance(m, Bottleneck):
          nn.init.zeros_(m.bn3.weight)
        elif isinstance(m, BasicBlock):
          nn.init.zeros_(m.bn2.weight)

  def _stage(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(
        nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
        nn.BatchNorm2d(planes * block.expansion),
      )
    layers = [block(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes * block.expansion
    layers += [block(self.inplanes, planes, 1, None) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    if self.standardize_input:
      x = standardize_images(x, self.input_epsilon)
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(self.avgpool(x), 1))


def standardize_images(x: torch.Tensor, epsilon: float) -> torch.Tensor:
  """`barlow_jax.resnet.standardize_images` on NCHW images: per image, the per-channel mean over
  pixels removed, divided by the RMS deviation over pixels and channels plus `epsilon`."""
  centred = x - x.mean(dim=(2, 3), keepdim=True)
  deviation = centred.square().mean(dim=(1, 2, 3), keepdim=True).sqrt()
  return centred / (deviation + epsilon)

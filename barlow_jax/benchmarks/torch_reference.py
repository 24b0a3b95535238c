"""The reference's Barlow Twins network, loss and LARS in PyTorch, for `torch_peer`'s timed steps.

Written as the reference (facebookresearch/barlowtwins, main.py) writes it, on one device:

- backbone: torchvision's ResNet-50 (v1.5, `zero_init_residual=True`, `fc = nn.Identity()`),
  restated here in plain `torch.nn` with torchvision's layout and initialisation so that it runs
  where torchvision is absent (the test compares the parameter names and shapes with torchvision's
  where it is installed);
- projector: `Linear(no bias) -> BatchNorm1d -> ReLU` per hidden layer, then `Linear(no bias)`;
- loss: `c = bn(z1).T @ bn(z2) / N` with `bn = BatchNorm1d(D, affine=False)`,
  `sum((diag(c) - 1)^2) + lambd * sum(offdiag(c)^2)` (Barlow Twins paper, Eq. 1 and Algorithm 1);
- optimizer: the reference's LARS (main.py `class LARS`), two parameter groups (weights, and
  biases + BN parameters at their own learning rate); parameters with ndim == 1 are excluded from
  weight decay and from the trust ratio; `mu = momentum * mu + dp; p -= lr * mu`;
- precision: `autocast(float16)` with `GradScaler`, as main.py's `torch.cuda.amp` step.

The reference's DistributedDataParallel and SyncBatchNorm wrappers are left out: on one device they
only add their own overhead, and the JAX step they are compared with runs on one device too. The
learning rates are the reference's base rates (0.2 and 0.0048 times B / 256), held constant: the
per-step schedule is host arithmetic that does not change the device work.
"""

from collections.abc import Sequence

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
  """torchvision's ResNet with `fc = nn.Identity()` (the reference's backbone): [N, 3, H, W] ->
  [N, 512 * expansion * width] float features.

  Args:
    name: one of ResNet18 / 34 / 50 / 101 / 152.
    width: channel multiplier (1.0 = torchvision; smaller only for tiny tests).
    zero_init_residual: zero the scale of the last BN of every residual block (the reference's
      `torchvision.models.resnet50(zero_init_residual=True)`).
  """

  def __init__(self, name: str = "ResNet50", width: float = 1.0, zero_init_residual: bool = True):
    super().__init__()
    if name not in _ARCHS:
      raise ValueError(f"backbone {name!r} is not a torchvision ResNet: use one of {list(_ARCHS)}")
    kind, layers = _ARCHS[name]
    block = BasicBlock if kind == "basic" else Bottleneck
    self.inplanes = _channels(64, width)
    self.conv1 = nn.Conv2d(3, self.inplanes, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(self.inplanes)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
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
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(self.avgpool(x), 1))


def off_diagonal(x: torch.Tensor) -> torch.Tensor:
  """The off-diagonal entries of a square [D, D] matrix, flattened (reference main.py)."""
  n, m = x.shape
  assert n == m
  return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def barlow_twins_loss(
  z1: torch.Tensor, z2: torch.Tensor, bn: nn.Module, lambd: float, batch_size: int
) -> torch.Tensor:
  """The reference's loss of embeddings z1, z2 [N, D]: scalar, `bn` the affine-free BatchNorm1d.

  C is divided by `batch_size`, the reference's nominal batch (main.py `BarlowTwins.forward`).
  """
  c = bn(z1).T @ bn(z2)
  c.div_(batch_size)
  on_diag = torch.diagonal(c).add_(-1).pow_(2).sum()
  off_diag = off_diagonal(c).pow_(2).sum()
  return on_diag + lambd * off_diag


class BarlowTwins(nn.Module):
  """main.py's `BarlowTwins`: forward(y1, y2) -> scalar loss; views [N, 3, H, W] float."""

  def __init__(
    self,
    backbone: str = "ResNet50",
    projector: Sequence[int] = (8192, 8192, 8192),
    *,
    batch_size: int,
    lambd: float = 0.0051,
    width: float = 1.0,
  ):
    super().__init__()
    self.backbone = ResNet(backbone, width=width)
    sizes = [self.backbone.num_features, *projector]
    layers = []
    for i in range(len(sizes) - 2):
      layers += [
        nn.Linear(sizes[i], sizes[i + 1], bias=False),
        nn.BatchNorm1d(sizes[i + 1]),
        nn.ReLU(inplace=True),
      ]
    layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
    self.projector = nn.Sequential(*layers)
    self.bn = nn.BatchNorm1d(sizes[-1], affine=False)
    self.lambd = lambd
    self.batch_size = batch_size

  def forward(self, y1, y2):
    z1 = self.projector(self.backbone(y1))
    z2 = self.projector(self.backbone(y2))
    return barlow_twins_loss(z1, z2, self.bn, self.lambd, self.batch_size)


def exclude_bias_and_norm(p: torch.Tensor) -> bool:
  return p.ndim == 1


class LARS(torch.optim.Optimizer):
  """The reference's LARS (main.py), with an optional multi-tensor (`foreach`) implementation.

  Per parameter p with gradient g: unless p.ndim == 1 (with the filters on), `g += wd * p` and
  `g *= eta * |p| / |g|` (1 where either norm is 0); then `mu = momentum * mu + g; p -= lr * mu`.
  `foreach=True` computes the same numbers with one kernel per operation over all parameters.
  """

  def __init__(
    self,
    params,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    eta: float = 0.001,
    weight_decay_filter: bool = False,
    lars_adaptation_filter: bool = False,
    foreach: bool = False,
  ):
    defaults = dict(
      lr=lr,
      weight_decay=weight_decay,
      momentum=momentum,
      eta=eta,
      weight_decay_filter=weight_decay_filter,
      lars_adaptation_filter=lars_adaptation_filter,
    )
    super().__init__(params, defaults)
    self.foreach = foreach

  @torch.no_grad()
  def step(self):
    for g in self.param_groups:
      if self.foreach:
        self._foreach_group(g)
        continue
      for p in g["params"]:
        dp = p.grad
        if dp is None:
          continue
        if not g["weight_decay_filter"] or not exclude_bias_and_norm(p):
          dp = dp.add(p, alpha=g["weight_decay"])
        if not g["lars_adaptation_filter"] or not exclude_bias_and_norm(p):
          param_norm = torch.norm(p)
          update_norm = torch.norm(dp)
          one = torch.ones_like(param_norm)
          q = torch.where(
            param_norm > 0.0,
            torch.where(update_norm > 0, (g["eta"] * param_norm / update_norm), one),
            one,
          )
          dp = dp.mul(q)
        param_state = self.state[p]
        if "mu" not in param_state:
          param_state["mu"] = torch.zeros_like(p)
        mu = param_state["mu"]
        mu.mul_(g["momentum"]).add_(dp)
        p.add_(mu, alpha=-g["lr"])

  def _foreach_group(self, g) -> None:
    params = [p for p in g["params"] if p.grad is not None]
    if not params:
      return
    decay = [not g["weight_decay_filter"] or not exclude_bias_and_norm(p) for p in params]
    adapt = [not g["lars_adaptation_filter"] or not exclude_bias_and_norm(p) for p in params]
    dps = [p.grad.clone() for p in params]
    decayed = [i for i, d in enumerate(decay) if d]
    if decayed and g["weight_decay"]:
      torch._foreach_add_(
        [dps[i] for i in decayed], [params[i] for i in decayed], alpha=g["weight_decay"]
      )
    adapted = [i for i, a in enumerate(adapt) if a]
    if adapted:
      p_norms = torch.stack(torch._foreach_norm([params[i] for i in adapted]))
      u_norms = torch.stack(torch._foreach_norm([dps[i] for i in adapted]))
      one = torch.ones_like(p_norms)
      q = torch.where(
        p_norms > 0.0, torch.where(u_norms > 0, g["eta"] * p_norms / u_norms, one), one
      )
      torch._foreach_mul_([dps[i] for i in adapted], list(q.unbind()))
    mus = []
    for p in params:
      state = self.state[p]
      if "mu" not in state:
        state["mu"] = torch.zeros_like(p)
      mus.append(state["mu"])
    torch._foreach_mul_(mus, g["momentum"])
    torch._foreach_add_(mus, dps)
    torch._foreach_add_(params, mus, alpha=-g["lr"])


def reference_optimizer(
  model: nn.Module, batch_size: int, *, weight_decay: float = 1.5e-6, foreach: bool = False
) -> LARS:
  """main.py's LARS over two groups: weights (lr 0.2 B/256), biases and BN (lr 0.0048 B/256)."""
  weights = [p for p in model.parameters() if p.ndim != 1]
  biases = [p for p in model.parameters() if p.ndim == 1]
  groups = [
    {"params": weights, "lr": 0.2 * batch_size / 256},
    {"params": biases, "lr": 0.0048 * batch_size / 256},
  ]
  return LARS(
    groups,
    lr=0.0,
    weight_decay=weight_decay,
    weight_decay_filter=True,
    lars_adaptation_filter=True,
    foreach=foreach,
  )

"""The reference's Barlow Twins network, loss and LARS in PyTorch, for `torch_peer`'s timed steps.

Written as the reference (facebookresearch/barlowtwins, main.py) writes it, on one device:

- backbone: torchvision's ResNet-50 (v1.5, `zero_init_residual=True`, `fc = nn.Identity()`),
  restated in plain `torch.nn` (`barlow_jax.torch_resnet`) with torchvision's layout and
  initialisation so that it runs where torchvision is absent (the test compares the parameter
  names and shapes with torchvision's where it is installed);
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

from barlow_jax.torch_resnet import BasicBlock, Bottleneck, ResNet  # noqa: F401  (names before the move)


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

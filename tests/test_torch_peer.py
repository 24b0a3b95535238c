"""barlow_jax.benchmarks.torch_peer: the reference's step in PyTorch, against float64 NumPy."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from barlow_jax.benchmarks import torch_peer  # noqa: E402


def test_resnet50_has_the_reference_parameter_count_and_zero_init_residual():
  model = torch_peer.ResNet("ResNet50")
  # torchvision resnet50 without its classifier (Barlow Twins paper's backbone).
  assert sum(p.numel() for p in model.parameters()) == 23_508_032
  assert model.num_features == 2048
  last_bns = [m.bn3 for m in model.modules() if isinstance(m, torch_peer.Bottleneck)]
  assert len(last_bns) == 16 and all(not bn.weight.any() for bn in last_bns)
  assert model.bn1.weight.eq(1).all()


@pytest.mark.parametrize("name", ["ResNet18", "ResNet50"])
def test_resnet_layout_matches_torchvision(name):
  torchvision = pytest.importorskip("torchvision")
  theirs = getattr(torchvision.models, name.lower())(zero_init_residual=True)
  theirs.fc = torch.nn.Identity()
  ours = torch_peer.ResNet(name)
  shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}
  assert shapes(ours) == shapes(theirs)


def test_unknown_backbone_is_named():
  with pytest.raises(ValueError, match="'ResNet7' is not a torchvision ResNet"):
    torch_peer.ResNet("ResNet7")


def _numpy_loss(z1, z2, lambd, eps=1e-5):
  """Barlow Twins paper, Algorithm 1, in float64 (BatchNorm1d in training mode: biased variance)."""
  z1, z2 = (np.asarray(z, np.float64) for z in (z1, z2))
  norm = lambda z: (z - z.mean(0)) / np.sqrt(z.var(0) + eps)
  c = norm(z1).T @ norm(z2) / z1.shape[0]
  on = np.sum((np.diag(c) - 1) ** 2)
  off = np.sum(c**2) - np.sum(np.diag(c) ** 2)
  return on + lambd * off


def test_loss_matches_float64_numpy():
  rng = np.random.default_rng(0)
  z1 = rng.normal(size=(32, 24)).astype(np.float32)
  z2 = (0.6 * z1 + rng.normal(size=z1.shape)).astype(np.float32)
  bn = torch.nn.BatchNorm1d(24, affine=False)
  loss = torch_peer.barlow_twins_loss(torch.from_numpy(z1), torch.from_numpy(z2), bn, 0.0051, 32)
  want = _numpy_loss(z1, z2, 0.0051)
  assert abs(float(loss) - want) <= 1e-5 * abs(want)


def _numpy_lars(params, grads, mus, lr, weight_decay, eta=0.001, momentum=0.9):
  """Reference main.py's LARS restated in float64: ndim == 1 excluded from decay and trust."""
  out_params, out_mus = [], []
  for p, g, mu in zip(params, grads, mus, strict=True):
    if p.ndim != 1:
      g = g + weight_decay * p
      p_norm, g_norm = np.linalg.norm(p), np.linalg.norm(g)
      g = g * (eta * p_norm / g_norm if p_norm > 0 and g_norm > 0 else 1.0)
    mu = momentum * mu + g
    out_params.append(p - lr * mu)
    out_mus.append(mu)
  return out_params, out_mus


@pytest.mark.parametrize("foreach", [False, True])
def test_lars_matches_float64_numpy_over_two_steps(foreach):
  rng = np.random.default_rng(1)
  shapes = [(6, 5), (5,), (4, 3, 2, 2), (7, 3)]
  values = [rng.normal(size=s) for s in shapes]
  values[3] = np.zeros(shapes[3])  # Zero norm: trust ratio 1.
  params = [torch.nn.Parameter(torch.tensor(v, dtype=torch.float32)) for v in values]
  lr, wd = 0.3, 0.05
  optimizer = torch_peer.LARS(
    params,
    lr=lr,
    weight_decay=wd,
    weight_decay_filter=True,
    lars_adaptation_filter=True,
    foreach=foreach,
  )
  want = [v.copy() for v in values]
  mus = [np.zeros(s) for s in shapes]
  for _ in range(2):
    grads = [rng.normal(size=s) for s in shapes]
    for p, g in zip(params, grads, strict=True):
      p.grad = torch.tensor(g, dtype=torch.float32)
    optimizer.step()
    want, mus = _numpy_lars(want, grads, mus, lr, wd)
  for p, w in zip(params, want, strict=True):
    np.testing.assert_allclose(p.detach().numpy(), w, rtol=1e-5, atol=1e-6)


def test_reference_optimizer_groups_weights_and_biases_at_their_rates():
  model = torch_peer.BarlowTwins("ResNet18", (16, 16), batch_size=512, width=0.125)
  weights, biases = torch_peer.reference_optimizer(model, 512).param_groups
  assert weights["lr"] == pytest.approx(0.4) and biases["lr"] == pytest.approx(0.0096)
  assert all(p.ndim > 1 for p in weights["params"]) and all(p.ndim == 1 for p in biases["params"])
  assert len(weights["params"]) + len(biases["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("variant", ["reference", "tuned"])
def test_tiny_step_runs_on_cpu(variant):
  result = torch_peer.run_variant(
    variant,
    device="cpu",
    backbone="ResNet18",
    projector=(16, 16, 16),
    width=0.125,
    batch=4,
    image_size=32,
    steps=2,
    warmup=1,
  )
  assert result["variant"] == variant and len(result["times_s"]) == 2
  assert result["warmup_steps"] >= 1
  assert result["images_per_second"] == pytest.approx(4 / result["step_seconds"])
  assert np.isfinite(result["loss"]) and result["loss"] > 0
  assert result["autocast_dtype"] == ("float16" if variant == "reference" else "bfloat16")


def test_run_peers_reports_a_failing_variant_and_keeps_the_others(monkeypatch):
  def fake(variant, **kwargs):
    if variant == "tuned":
      raise RuntimeError("CUDA out of memory")
    return {"variant": variant, **kwargs}

  monkeypatch.setattr(torch_peer, "run_variant", fake)
  results = torch_peer.run_peers(["tuned", "reference"], device="cpu", batch=2)
  assert results == [
    {"variant": "tuned", "error": "RuntimeError: CUDA out of memory"},
    {"variant": "reference", "device": "cpu", "batch": 2},
  ]

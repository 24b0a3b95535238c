"""PyTorch interop: a torchvision-layout ResNet written here in torch (torchvision itself is not a
dependency) is converted to flax and must give the same eval-mode features; export gives back the
identical tensors; the reference's two file layouts and the command line work; bad keys fail.
"""

import logging
import os
import pathlib
import sys

import jax
import ml_collections
import numpy as np
import pytest

from barlow_jax import checkpointing, convert, models

torch = pytest.importorskip("torch")
nn = torch.nn


class TorchBasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU()
    self.downsample = None
    if stride != 1 or inplanes != planes:
      self.downsample = nn.Sequential(
        nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
      )

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    y = self.relu(self.bn1(self.conv1(x)))
    return self.relu(self.bn2(self.conv2(y)) + identity)


class TorchBottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # v1.5: stride here.
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU()
    self.downsample = None
    if stride != 1 or inplanes != planes * 4:
      self.downsample = nn.Sequential(
        nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
      )

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    return self.relu(self.bn3(self.conv3(y)) + identity)


class TorchResNet(nn.Module):
  """torchvision.models.ResNet's module tree and forward, with a width and a CIFAR stem."""

  def __init__(self, block, layers, width=1.0, stem="imagenet", num_classes=0):
    super().__init__()
    planes = [int(round(64 * width * 2**i)) for i in range(4)]
    self.inplanes = planes[0]
    if stem == "imagenet":
      self.conv1 = nn.Conv2d(3, planes[0], 7, 2, 3, bias=False)
      self.maxpool = nn.MaxPool2d(3, 2, 1)
    else:
      self.conv1 = nn.Conv2d(3, planes[0], 3, 1, 1, bias=False)
      self.maxpool = nn.Identity()
    self.bn1 = nn.BatchNorm2d(planes[0])
    self.relu = nn.ReLU()
    for i, (p, n) in enumerate(zip(planes, layers)):
      blocks = []
      for j in range(n):
        blocks.append(block(self.inplanes, p, 2 if i > 0 and j == 0 else 1))
        self.inplanes = p * block.expansion
      setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(self.inplanes, num_classes) if num_classes else None

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return torch.flatten(self.avgpool(x), 1)


def _torch_projector(sizes):
  layers = []
  for i in range(len(sizes) - 2):
    layers += [nn.Linear(sizes[i], sizes[i + 1], bias=False), nn.BatchNorm1d(sizes[i + 1])]
    layers.append(nn.ReLU(inplace=True))
  layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
  return nn.Sequential(*layers)


def _randomise_bn(module, seed):
  """Non-trivial BN affine parameters and running statistics, so a mix-up cannot pass."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
        n = m.num_features
        m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
        m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
        m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
        m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
  return module.eval()


def _numpy_state_dict(module):
  return {k: v.numpy() for k, v in module.state_dict().items()}


def _flax_backbone(name, **kwargs):
  return models.BACKBONES[name](**kwargs)


def _features(backbone, variables, images_nchw):
  x = np.transpose(images_nchw, (0, 2, 3, 1))
  return np.asarray(jax.jit(lambda v, x: backbone.apply(v, x, train=False))(variables, x))


def _assert_close(actual, expected):
  np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize(
  "name, block, layers, width, stem, size",
  [
    ("ResNet18", TorchBasicBlock, (2, 2, 2, 2), 0.25, "imagenet", 32),
    ("ResNet50", TorchBottleneck, (3, 4, 6, 3), 0.125, "cifar", 16),
  ],
)
def test_eval_features_match_torch_and_export_round_trips(name, block, layers, width, stem, size):
  torch.manual_seed(0)
  net = _randomise_bn(TorchResNet(block, layers, width, stem), seed=1)
  state_dict = _numpy_state_dict(net)
  inferred = convert.infer_model_config(state_dict)
  assert inferred == {"backbone": name, "stem": stem, "width": width}

  backbone = _flax_backbone(name, width=width, stem=stem)
  variables = convert.backbone_from_torch(state_dict, backbone)
  images = np.random.default_rng(0).normal(size=(4, 3, size, size)).astype(np.float32)
  with torch.no_grad():
    expected = net(torch.from_numpy(images)).numpy()
  actual = _features(backbone, variables, images)
  assert actual.shape == expected.shape == (4, backbone.num_features)
  _assert_close(actual, expected)

  exported = convert.backbone_to_torch(variables)
  assert set(exported) == set(net.state_dict())
  for key, value in net.state_dict().items():
    assert exported[key].dtype == value.dtype and torch.equal(exported[key], value), key
  net.load_state_dict(exported, strict=True)


def test_training_checkpoint_and_command_line(tmp_path, caplog, capsys):
  """The reference's checkpoint.pth layout -> backbone/ dir (CLI) -> back to a .pth (CLI)."""
  torch.manual_seed(1)
  net = _randomise_bn(TorchResNet(TorchBasicBlock, (2, 2, 2, 2), 0.125, "cifar"), seed=2)
  projector = _randomise_bn(_torch_projector([64, 32, 32, 16]), seed=3)
  loss_bn = nn.BatchNorm1d(16, affine=False)
  model_sd = {f"module.backbone.{k}": v for k, v in net.state_dict().items()}
  model_sd.update({f"module.projector.{k}": v for k, v in projector.state_dict().items()})
  model_sd.update({f"module.bn.{k}": v for k, v in loss_bn.state_dict().items()})
  optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
  checkpoint = {"epoch": 3, "model": model_sd, "optimizer": optimizer.state_dict()}
  path = str(tmp_path / "checkpoint.pth")
  torch.save(checkpoint, path)

  backbone_sd, projector_sd = convert.split_state_dict(convert.load_torch_state_dict(path))
  assert set(backbone_sd) == set(net.state_dict())
  assert set(projector_sd) == set(projector.state_dict())
  flax_projector = models.Projector(models.parse_projector_sizes("32-32-16"))
  projector_vars = convert.projector_from_torch(projector_sd, flax_projector, in_features=64)
  x = np.random.default_rng(1).normal(size=(8, 64)).astype(np.float32)
  with torch.no_grad():
    expected = projector(torch.from_numpy(x)).numpy()
  _assert_close(np.asarray(flax_projector.apply(projector_vars, x, train=False)), expected)
  exported = convert.projector_to_torch(projector_vars)
  for key, value in projector.state_dict().items():
    assert torch.equal(exported[key], value), key

  out_dir = tmp_path / "backbone"
  assert convert.main(["--from", path, "--to", str(out_dir)]) == 0
  capsys.readouterr()
  with pytest.raises(SystemExit):  # A user's mistake: one line on stderr, exit 1.
    convert.main(["--from", path, "--to", str(out_dir)])
  assert "already exists" in capsys.readouterr().err
  variables, model_config = checkpointing.load_backbone(str(out_dir))
  assert model_config["backbone"] == "ResNet18" and model_config["stem"] == "cifar"
  assert model_config["width"] == 0.125 and model_config["projector"] == "32-32-16"
  backbone = models.create_model(ml_collections.ConfigDict(model_config)).backbone
  images = np.random.default_rng(2).normal(size=(4, 3, 16, 16)).astype(np.float32)
  with torch.no_grad():
    expected = net(torch.from_numpy(images)).numpy()
  _assert_close(_features(backbone.clone(dtype=np.float32), variables, images), expected)

  pth = tmp_path / "exported.pth"
  assert convert.main(["--export", "--from", str(out_dir), "--to", str(pth)]) == 0
  reloaded = torch.load(pth, weights_only=True)
  for key, value in net.state_dict().items():
    assert torch.equal(reloaded[key], value), key

  # A backbone that standardises its input exports the same weights, and says what torch lacks.
  standardising = tmp_path / "standardising"
  checkpointing.save_backbone(
    str(standardising), variables, {**model_config, "standardize_input": True}
  )
  with caplog.at_level(logging.WARNING):
    assert convert.main(["--export", "--from", str(standardising), "--to", str(pth)]) == 0
  assert "standardize_images" in caplog.text
  assert torch.equal(torch.load(pth, weights_only=True)["conv1.weight"], net.conv1.weight.data)


def test_released_layout_ignores_fc_and_bad_keys_are_listed(tmp_path):
  torch.manual_seed(2)
  net = TorchResNet(TorchBasicBlock, (2, 2, 2, 2), 0.125, "cifar", num_classes=10)
  state_dict = _numpy_state_dict(net)
  assert "fc.weight" in state_dict
  backbone_sd, projector_sd = convert.split_state_dict(state_dict)
  assert projector_sd == {} and not any(k.startswith("fc.") for k in backbone_sd)
  backbone = _flax_backbone("ResNet18", width=0.125, stem="cifar")
  convert.backbone_from_torch(state_dict, backbone)  # fc.* accepted and ignored.

  broken = dict(backbone_sd)
  del broken["layer3.1.bn2.running_var"]
  broken["layer3.1.bn2.running_std"] = backbone_sd["layer3.1.bn2.running_var"]
  with pytest.raises(ValueError, match="layer3.1.bn2.running_var") as info:
    convert.backbone_from_torch(broken, backbone)
  assert "layer3.1.bn2.running_std" in str(info.value)

  with pytest.raises(ValueError, match="shapes differ"):
    convert.backbone_from_torch(backbone_sd, _flax_backbone("ResNet18", width=0.25, stem="cifar"))
  with pytest.raises(ValueError, match="missing keys"):
    convert.backbone_from_torch(backbone_sd, _flax_backbone("ResNet34", width=0.125, stem="cifar"))
  with pytest.raises(ValueError, match="outside backbone/projector"):
    convert.split_state_dict({"module.backbone.conv1.weight": 0, "module.head.weight": 0})


def test_missing_torch_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(ImportError, match=r"pip install \.\[torch\]"):
    convert.load_torch_state_dict("resnet50.pth")


_LOAD_IN_TORCH = """
import sys, numpy as np, torch
from barlow_jax import convert
net = convert.torch_backbone(sys.argv[1])
images = torch.from_numpy(np.load(sys.argv[2]))
with torch.no_grad():
  np.save(sys.argv[3], net(images).numpy())
print(type(net).__module__, type(net).__name__)
"""


@pytest.mark.parametrize(
  "name, width, stem, standardize, size, source",
  [
    ("ResNet18", 0.25, "cifar", False, 16, "pth"),  # The default job's and the CIFAR recipe's.
    ("ResNet50", 0.125, "imagenet", True, 32, "dir"),  # The cluttered digits' standardisation.
  ],
)
def test_exported_backbone_loads_into_torch_in_a_fresh_interpreter(
  tmp_path, name, width, stem, standardize, size, source
):
  import subprocess

  model_config = checkpointing.full_model_config(
    {"backbone": name, "width": width, "stem": stem, "standardize_input": standardize}
    | {"dtype": "float32"}  # The reference features in float32, as torch computes them.
  )
  backbone = models.create_model(ml_collections.ConfigDict(model_config)).backbone
  x = np.zeros((2, size, size, 3), np.float32)
  variables = jax.tree.map(np.asarray, backbone.init(jax.random.key(0), x, train=False))
  # Non-trivial BN parameters and statistics (the 1-d leaves), so that a mix-up cannot pass.
  rng = np.random.default_rng(1)
  perturb = lambda v: v + rng.uniform(0.1, 0.5, v.shape).astype(v.dtype) if v.ndim == 1 else v
  variables = jax.tree.map(perturb, variables)
  directory = str(tmp_path / "backbone")
  checkpointing.save_backbone(directory, variables, model_config)
  path = directory
  if source == "pth":
    path = str(tmp_path / "backbone.pth")
    convert.backbone_dir_to_torch_file(directory, path)
  images = rng.normal(size=(4, 3, size, size)).astype(np.float32) * 2 + 0.5
  np.save(tmp_path / "images.npy", images)
  out = tmp_path / "features.npy"
  root = pathlib.Path(__file__).resolve().parents[1]
  proc = subprocess.run(
    [sys.executable, "-c", _LOAD_IN_TORCH, path, str(tmp_path / "images.npy"), str(out)],
    capture_output=True,
    text=True,
    env=dict(os.environ, PYTHONPATH=str(root)),
    cwd=root,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "barlow_jax.torch_resnet ResNet" in proc.stdout
  expected = _features(backbone, variables, images)
  _assert_close(np.load(out), expected)

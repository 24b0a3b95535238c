"""The package's promises to a new user: a version, a light import, 8 devices under test."""

import subprocess
import sys

import barlow_jax
from barlow_jax import config as config_lib


def test_version_is_a_release_string():
  major, minor, patch = barlow_jax.__version__.split(".")
  assert all(part.isdigit() for part in (major, minor, patch))


def test_eight_emulated_cpu_devices(devices):
  assert len(devices) == 8
  assert all(d.platform == "cpu" for d in devices)


def test_importing_the_package_loads_no_tensorflow():
  probe = (
    "import sys, barlow_jax, barlow_jax.config;"
    "bad = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules];"
    "sys.exit(f'imported {bad}' if bad else 0)"
  )
  result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr + result.stdout


def test_base_config_is_the_reference():
  config = config_lib.base_config()
  assert config.batch_size == 2048
  assert config.optim.lr_weights == 0.2 and config.optim.lr_biases == 0.0048
  assert config.loss.lambd == 0.0051
  assert config.model.projector == "8192-8192-8192"
  assert config.augment.view_a.blur_prob == 1.0 and config.augment.view_a.solarize_prob == 0.0
  assert config.augment.view_b.blur_prob == 0.1 and config.augment.view_b.solarize_prob == 0.2

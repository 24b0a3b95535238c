"""barlow_jax/__init__.py: a version, a light import, and 8 emulated devices under test."""

import subprocess
import sys

import barlow_jax


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

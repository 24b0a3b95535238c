"""Every test sees 8 emulated CPU devices and TensorFlow never sees an accelerator.

This must run before anything imports jax, so it sets the environment at import time.
"""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["CUDA_VISIBLE_DEVICES"] = ""  # Hides GPUs from TensorFlow (and jax's CUDA plugin).

import pytest  # noqa: E402

NUM_DEVICES = 8


@pytest.fixture(scope="session")
def devices():
  import jax

  devs = jax.devices()
  assert len(devs) == NUM_DEVICES, f"conftest expected {NUM_DEVICES} CPU devices, got {devs}"
  return devs

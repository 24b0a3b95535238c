"""A tiny multi-process program for tests/test_launch.py: joins, sums a global array, maybe dies."""

import os
import signal
import sys

import numpy as np

from barlow_jax import launch

launch.initialize()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

mesh = Mesh(jax.devices(), ("data",))
local = np.arange(jax.local_device_count(), dtype=np.float32) + 100 * jax.process_index()
global_array = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local)
global_sum = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))
print(f"process {jax.process_index()}/{jax.process_count()} sum {float(global_sum(global_array))}")
if "die" in sys.argv and jax.process_index() == 1:
  os.kill(os.getpid(), signal.SIGKILL)
if "die" in sys.argv:
  # Process 0 blocks here in a collective with the process that died.
  print(f"second sum {float(global_sum(global_array * 2))}")

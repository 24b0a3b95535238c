"""The host memory XLA:TPU's compile of a config needs, checked against this machine's before a
compile that would be killed.

`estimate_bytes(config, spec)` is fitted to the peak RSS of compiles measured on a 2-core x86-64
machine (docs/scaling.md, "What drives the TPU compiler's host memory"); `check_host` compares
it with what this process may use (free memory, the address-space limit `ulimit -v`, a cgroup's
limit).
"""

import math
import resource

from barlow_jax import models
from barlow_jax.benchmarks import tpu_slices

GB = 10**9

# Peak RSS of the training step's XLA:TPU compile (docs/scaling.md, "What drives the TPU
# compiler's host memory"; 2-core x86-64, jax 0.10.2, libtpu 0.0.42.1, v5e:2x2): ResNet-50 +
# 8192-8192-8192 at 224 px, bfloat16, 8, 32 and 128 examples per chip: 4.70, 5.01 and 5.61 GB.
# A least-squares line through these three points in `activation_bytes` (residuals under 0.08
# GB): a fixed part (the program: backbone, projector, optimizer, monitors) and a small part
# growing with the batch per chip. ResNet-18 + 512 at 64 px, 64 per chip (2.4 GB) lies below it:
# the estimate is an upper bound there. The chip count barely matters (v5e:2x4, 8 per chip:
# 4.75 GB), nor does it past 8 chips (v5e:4x4 and v5e:16x16 at 128 and 8 per chip: 5.81 and 4.88
# GB). v5p compiles like v5e (v5p:2x2x1 and v5p:2x2x4 at 8 and 128 per chip: 4.62 and 5.40 GB);
# v4 needs more (v4:2x2x1 and v4:2x2x4: 6.43 and 8.99 GB, 1.37x and 1.60x the line), so its
# estimate is the line times `_GENERATION_FACTOR`. Not measured: backbones beyond ResNet-50.
_BASE_BYTES = 4.82 * GB
_BYTES_PER_ACTIVATION_BYTE = 0.012
_GENERATION_FACTOR = {"v4": 1.6}


def activation_bytes(config, chips: int) -> int:
  """The activation-size proxy the estimate scales with: both views' input values per chip
  (batch per chip x pixels x 3) times the backbone's feature width, in bytes of bfloat16."""
  batch = int(config.batch_size) // max(chips, 1)
  size = int(config.dataset.image_size)
  return 2 * batch * size * size * 3 * models.backbone_features(config.model)


def estimate_bytes(config, spec: tpu_slices.Slice) -> int:
  """Estimated peak host RSS (bytes) of compiling `config`'s training step for `spec`: the line
  fitted on measured compiles of ResNet-50 + 8192 (see above), not a bound."""
  line = _BASE_BYTES + _BYTES_PER_ACTIVATION_BYTE * activation_bytes(config, spec.chips)
  return int(line * _GENERATION_FACTOR.get(spec.generation, 1.0))


def available_bytes() -> int:
  """What this process may still use: the least of free memory (MemAvailable), the address-space
  limit (`ulimit -v`, counted against RSS, which stays below it) and a cgroup v2 limit."""
  limits = []
  try:
    with open("/proc/meminfo") as f:
      info = dict(line.split(":", 1) for line in f)
    limits.append(int(info["MemAvailable"].split()[0]) * 1024)
  except (OSError, KeyError, ValueError):
    pass
  soft, _ = resource.getrlimit(resource.RLIMIT_AS)
  if soft not in (resource.RLIM_INFINITY, -1):
    limits.append(soft)
  try:
    with open("/sys/fs/cgroup/memory.max") as f:
      value = f.read().strip()
    if value != "max":
      limits.append(int(value))
  except (OSError, ValueError):
    pass
  return min(limits) if limits else math.inf


def check_host(config, spec: tpu_slices.Slice) -> str:
  """'' when this machine has the memory the compile needs, else what host it needs."""
  need, have = estimate_bytes(config, spec), available_bytes()
  if need <= have:
    return ""
  return (
    f"compiling this config for {spec.name} needs about {need / GB:.0f} GB of host memory "
    f"(estimate from measured compiles, docs/scaling.md); this machine has {have / GB:.1f} GB "
    f"available. Run the command on a host with at least {math.ceil(need / GB * 1.2)} GB free "
    "(e.g. the TPU VM itself, or any 32+ GB x86-64 Linux machine), or pass --force to try."
  )

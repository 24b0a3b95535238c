"""Compile one monitor of the training step alone for a TPU slice (its host cost in isolation).

    python experiments/compile_monitor_trial.py --part=rank --width=2048 [--eigh=qdwh|jacobi]
    python experiments/compile_monitor_trial.py --part=summary --width=8192

`rank`: `monitors.effective_rank` of a batch-sharded [batch, width] float32 array (`--eigh`
forces the TPU eigendecomposition's algorithm); `summary`: `monitors.correlation_summary` of two
[batch, width] embeddings. Prints one JSON line with the compile's seconds (docs/scaling.md,
"What drives the TPU compiler's host memory"); run under `/usr/bin/time -v` for the peak RSS.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from barlow_jax import monitors, parallel
from barlow_jax.benchmarks import tpu_slices


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--topology", default="v5e:2x2")
  p.add_argument("--part", choices=("rank", "summary"), default="rank")
  p.add_argument("--width", type=int, default=2048)
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--eigh", choices=("default", "qdwh", "jacobi"), default="default")
  p.add_argument("--out", default="")
  a = p.parse_args()
  if a.eigh != "default":
    impl = {
      "qdwh": jax.lax.linalg.EighImplementation.QDWH,
      "jacobi": jax.lax.linalg.EighImplementation.JACOBI,
    }[a.eigh]
    orig = jax.lax.linalg.eigh
    jnp.linalg.eigh = lambda x, **k: orig(x, implementation=impl)[::-1]
  spec = tpu_slices.parse_topology(a.topology)
  mesh = parallel.create_mesh(tpu_slices.slice_devices(spec))
  x = jax.ShapeDtypeStruct((a.batch, a.width), jnp.float32, sharding=parallel.batch_sharding(mesh))
  if a.part == "rank":
    fn, args = monitors.effective_rank, (x,)
  else:
    fn = lambda z_a, z_b: monitors.correlation_summary(z_a, z_b, eps=1e-5)
    args = (x, x)
  out = NamedSharding(mesh, P())
  t0 = time.perf_counter()
  lowered = jax.jit(fn, out_shardings=out).lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  row = {
    "trial": vars(a),
    "lower_seconds": round(t1 - t0, 1),
    "compile_seconds": round(t2 - t1, 1),
    "temp_bytes": int(compiled.memory_analysis().temp_size_in_bytes),
    "hlo_chars": len(compiled.as_text()),
  }
  print(json.dumps(row))
  if a.out:
    with open(a.out, "w") as f:
      json.dump(row, f, indent=1)


if __name__ == "__main__":
  main()

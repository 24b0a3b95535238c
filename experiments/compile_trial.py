"""One compile trial of the training step for a TPU slice: what drives XLA:TPU's host memory.

    python experiments/compile_trial.py --topology=v5e:2x2 --batch=32 [--backbone=ResNet50]
        [--projector=8192-8192-8192] [--size=224] [--no_monitors] [--no_probe]
        [--loss_method=auto] [--out=FILE.json]

Compiles only `train_step.jit_train_step` of configs/imagenet_resnet50.py with the given changes
(through `benchmarks.compile.compile_slice`) and prints one JSON line: the trial's settings, the
compile's seconds and the step's HBM per chip. Run it under `/usr/bin/time -v` for the peak RSS
(docs/scaling.md, "What drives the TPU compiler's host memory").
"""

import argparse
import json
import sys
import time

from barlow_jax.benchmarks import compile as compile_bench


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--topology", default="v5e:2x2")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--backbone", default="ResNet50")
  p.add_argument("--projector", default="8192-8192-8192")
  p.add_argument("--size", type=int, default=224)
  p.add_argument("--no_monitors", action="store_true")
  p.add_argument("--no_probe", action="store_true")
  p.add_argument("--loss_method", default="auto")
  p.add_argument("--out", default="")
  a = p.parse_args()

  sys.path.insert(0, "configs")
  import imagenet_resnet50

  config = imagenet_resnet50.get_config()
  config.batch_size = a.batch
  config.model.backbone = a.backbone
  config.model.projector = a.projector
  config.dataset.image_size = a.size
  config.loss.method = a.loss_method
  config.online_probe = not a.no_probe
  if a.no_monitors:
    from barlow_jax import train_step

    # The step without the `lax.cond` of the monitors (slabs of C, heatmaps, the Gram eigh).
    train_step._monitors_when = lambda *args: {}
  t0 = time.perf_counter()
  result = compile_bench.compile_slice(
    config, a.topology, num_classes=1000, programs=("train_step",)
  )
  step = result["programs"]["train_step"]
  row = {
    "trial": vars(a),
    "chips": result["chips"],
    "devices": result["devices"],
    "lower_seconds": step["lower_seconds"],
    "compile_seconds": step["compile_seconds"],
    "wall_seconds": round(time.perf_counter() - t0, 1),
    "total_bytes": step["total_bytes"],
    "temp_bytes": step["temp_bytes"],
    "flops": step["flops"],
    "collectives": step["collectives"],
  }
  print(json.dumps(row))
  if a.out:
    with open(a.out, "w") as f:
      json.dump(row, f, indent=1)


if __name__ == "__main__":
  main()

"""The reference run on Cloud TPU slices: docs/scaling.md's table from the compile command's JSON.

    python experiments/tpu_table.py experiments/results/tpu/reference/*.json

Each file is the output of `python -m barlow_jax.benchmark compile --programs=train_step
--out=FILE` (`barlow_jax/benchmarks/compile.py`). Per slice, per chip: HBM of the training step
(total, headroom), the collectives' bytes (the results' sizes per chip, summed), XLA:TPU's FLOPs
and the FLOP-bound step time at the chip's dense bfloat16 peak (a lower bound).

The largest global batch is an estimate: XLA:TPU's total HBM of the step is, per chip generation,
close to a straight line in the batch per chip (the activations; parameters and optimizer state
do not change), so two compiles of one generation at different batches per chip give the line,
and the batch per chip where it meets the chip's HBM, times the chips, rounded down to a multiple
of the chips, is the estimate. Where a generation has one compile only the column says so.
"""

import collections
import json
import math
import sys

GiB = 2**30


def load(paths: list[str]) -> list[dict]:
  """The compile command's results among `paths`; other JSON beside them (the emulated-CPU memory
  benchmark's) is named on stderr and left out."""
  rows = []
  for path in paths:
    with open(path) as f:
      result = json.load(f)
    if "topology" not in result:
      print(f"skipped {path}: not a compile command result", file=sys.stderr)
      continue
    result["path"] = path
    rows.append(result)
  return rows


def per_chip_batch(result: dict) -> int:
  return result["batch"] // result["chips"]


def generation(result: dict) -> str:
  return result["topology"].split(":")[0]


def hbm_lines(rows: list[dict]) -> dict[str, tuple[float, float]]:
  """Generation -> (GiB at batch 0 per chip, GiB per example per chip), from the two most distant
  batches per chip of the generation's replicated (FSDP off) compiles."""
  points = collections.defaultdict(dict)
  for r in rows:
    if r["fsdp_min_size"] == 0 and r["model"].endswith("8192-8192-8192, bfloat16"):
      step = r["programs"]["train_step"]
      points[generation(r)][per_chip_batch(r)] = step["total_bytes"] / GiB
  lines = {}
  for gen, by_batch in points.items():
    if len(by_batch) >= 2:
      lo, hi = min(by_batch), max(by_batch)
      slope = (by_batch[hi] - by_batch[lo]) / (hi - lo)
      lines[gen] = (by_batch[lo] - slope * lo, slope)
  return lines


def max_global_batch(result: dict, lines: dict) -> str:
  line = lines.get(generation(result))
  if line is None:
    return "one compile only"
  intercept, slope = line
  per_chip = math.floor((result["hbm_bytes"] / GiB - intercept) / slope)
  return f"~{per_chip * result['chips']:,} ({per_chip} per chip)"


def collective_bytes(step: dict) -> str:
  parts = [
    f"{kind} {v['bytes'] / 2**20:,.0f} MiB"
    for kind, v in step["collectives"].items()
    if v["count"] and v["bytes"]
  ]
  return ", ".join(parts) or "none"


def _ms(seconds: float) -> str:
  ms = seconds * 1e3
  return f"{ms:.1f}" if ms < 10 else f"{ms:.0f}"


def table(rows: list[dict]) -> str:
  lines = hbm_lines(rows)
  out = [
    "| slice | libtpu | chips / hosts | model | batch (per chip) | total HBM / chip | headroom | "
    "largest global batch (estimate) | collectives per chip per step | TFLOP per chip | "
    "FLOP-bound step (lower bound) | compile |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  # The table is the reference run's global batch; the other compiles only give the lines.
  shown = [r for r in rows if r["batch"] == 2048]
  for r in sorted(shown, key=lambda r: (r["fsdp_min_size"], generation(r), r["chips"])):
    step = r["programs"]["train_step"]
    model = r["model"].replace(", bfloat16", "").replace("ResNet50 + ", "")
    if r["fsdp_min_size"]:
      model += f", FSDP >= {r['fsdp_min_size']:,}"
    fits = "" if step["fits"] else " (does not fit)"
    out.append(
      f"| {r['accelerator_type']} (`{r['topology']}`) | {r.get('libtpu_version', '?')} | "
      f"{r['chips']} / {r['hosts']} | {model} | "
      f"{r['batch']:,} ({per_chip_batch(r)}) | {step['total_bytes'] / GiB:.2f} / "
      f"{r['hbm_bytes'] / GiB:.0f} GiB{fits} | {step['headroom_bytes'] / GiB:.2f} GiB "
      f"({step['headroom_percent']}%) | "
      f"{max_global_batch(r, lines) if not r['fsdp_min_size'] else '-'} | "
      f"{collective_bytes(step)} | {step['flops'] / 1e12:.2f} | "
      f"{_ms(step['ideal_step_seconds'])} ms | {step['compile_seconds'] / 60:.1f} min |"
    )
  return "\n".join(out)


if __name__ == "__main__":
  print(table(load(sys.argv[1:])))

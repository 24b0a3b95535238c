"""The training scalars of a run from its log: for workdirs written before `metrics.jsonl`.

Since `barlow_jax.metrics_file` exists, a run's scalars are read from `WORKDIR/metrics.jsonl`
(`experiments.collect`). Workdirs of studies run before that have only the log lines clu's
`LoggingWriter` printed; this reader keeps `--collect_only` over them from blanking the final loss,
mean C_ii and rank columns. Delete it once no such workdir matters.
"""

import re

from experiments import workdirs

# clu's LoggingWriter line: "... logging_writer.py:48] [250] loss=1.2, representation_rank=3.4".
_SCALARS_LINE = re.compile(r"logging_writer\.py:\d+\] \[(\d+)\] (.*)$")


def read_log_metrics(log_path: str) -> dict[int, dict[str, float]]:
  """`{step: {name: value}}` from the LoggingWriter lines of a run's log, in the shape of
  `barlow_jax.metrics_file.read_metrics` (lines of one step merged, the later value winning;
  values that are not numbers skipped). `{}` when the log is missing or has no such line."""
  out: dict[int, dict[str, float]] = {}
  for line in (workdirs.read_text(log_path) or "").splitlines():
    match = _SCALARS_LINE.search(line)
    if not match:
      continue
    scalars = out.setdefault(int(match.group(1)), {})
    for item in match.group(2).split(", "):
      name, _, value = item.partition("=")
      try:
        scalars[name.strip()] = float(value)
      except ValueError:
        continue
  return out

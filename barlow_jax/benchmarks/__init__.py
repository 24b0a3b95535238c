"""One module per benchmark, each with `main(argv) -> int`; `barlow_jax.benchmark` dispatches."""

import json
import os


def write_json(result: dict, path: str) -> None:
  """Writes a benchmark's result dict to `path` (parent folders created), sorted and indented."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=2, sort_keys=True)

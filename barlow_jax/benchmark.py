"""Benchmarks users can run on their own CPU, GPU or TPU.

    python -m barlow_jax.benchmark loss  [--help]   # loss + gradient per method, N x D grid
    python -m barlow_jax.benchmark step  [--help]   # full training step, images/s
    python -m barlow_jax.benchmark input [--help]   # two-view input pipeline, images/s
    python -m barlow_jax.benchmark suite [--help]   # accelerator suite: step, PyTorch peer, loss
    python -m barlow_jax.benchmark memory [--help]  # per-device memory for N devices, compile only
    python -m barlow_jax.benchmark compile [--help] # a config compiled for a TPU slice (libtpu)

Each prints a table and writes JSON (see its --help: absl flags, the flags after NAME). Times are
medians over repeats.
"""

import importlib
import sys

_BENCHMARKS = ("loss", "step", "input", "suite", "memory", "compile")


def main(argv: list[str]) -> int:
  """The command line in-process: `argv` is ["benchmark", NAME, flags...]; returns the status
  (2 with this text for a missing or unknown NAME)."""
  if len(argv) < 2 or argv[1] not in _BENCHMARKS:
    print(__doc__, file=sys.stderr)
    return 2
  module = importlib.import_module(f"barlow_jax.benchmarks.{argv[1]}")
  return module.main(argv[1:]) or 0


if __name__ == "__main__":
  if len(sys.argv) < 2 or sys.argv[1] not in _BENCHMARKS:
    print(__doc__, file=sys.stderr)
    sys.exit(2)
  # absl parses the flags after NAME; `--help` prints NAME's docstring and flags.
  module = importlib.import_module(f"barlow_jax.benchmarks.{sys.argv[1]}")
  module.COMMAND.run([sys.argv[0], *sys.argv[2:]])

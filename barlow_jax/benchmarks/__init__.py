"""One module per benchmark, each with `main(argv) -> int` and its `barlow_jax.cli.Command`;
`barlow_jax.benchmark` dispatches."""

import functools
import json
import os
from typing import Any

from absl import flags


def write_json(result: dict, path: str) -> None:
  """Writes a benchmark's result dict to `path` (parent folders created), sorted and indented."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=2, sort_keys=True)


# The flags several benchmarks share, defined here once; each benchmark picks its defaults.
_SHARED = {
  "batch": (flags.DEFINE_integer, "global batch (examples)"),
  "image_size": (flags.DEFINE_integer, "crop side in pixels"),
  "dtype": (
    functools.partial(flags.DEFINE_enum, enum_values=("float32", "bfloat16")),
    "config.model.dtype of the JAX model",
  ),
  "backbone": (flags.DEFINE_string, "config.model.backbone, e.g. ResNet50"),
  "width": (flags.DEFINE_float, "backbone channel multiplier"),
  "projector": (flags.DEFINE_string, "config.model.projector: layer widths, e.g. 8192-8192-8192"),
  "optimizer": (
    functools.partial(flags.DEFINE_enum, enum_values=("lars", "sgd", "adamw", "lamb")),
    "config.optim.name",
  ),
  "steps": (flags.DEFINE_integer, "timed steps per measurement"),
  "warmup": (flags.DEFINE_integer, "untimed steps after compiling"),
  "repeats": (flags.DEFINE_integer, "timed repeats"),
  "seconds": (flags.DEFINE_float, "timed seconds per case"),
  "out": (flags.DEFINE_string, "JSON output path ('' = print only)"),
}


def define_shared_flags(flag_values: flags.FlagValues, **defaults: Any) -> None:
  """Defines the shared flags named in `defaults` on `flag_values`, each with its default.

  A value may be `(default, help)` where a benchmark's help says more than the shared one.
  Raises KeyError for a name that is not a shared flag.
  """
  for name, value in defaults.items():
    define, help_text = _SHARED[name]
    default, help_text = value if isinstance(value, tuple) else (value, help_text)
    define(name=name, default=default, help=help_text, flag_values=flag_values)

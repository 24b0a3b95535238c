r"""Saves a grid of augmented view pairs (view A, view B) so a person can see what the network sees.

    python -m barlow_jax.tools.show_augmentations --config=configs/cluttered_digits.py \
        --out=views.png [--pairs=32] [--step=0]

The pairs are the first `--pairs` examples of training batch `--step` of the config's pretraining
stream (the same crops and colours training uses), un-normalised back to [0, 1] pixels. Each cell
shows view A on the left and view B on the right, titled with the label when there is one.
"""

import math
import os

from absl import app, flags
from etils import epath
from ml_collections import config_flags

from barlow_jax import cli


def define_flags(flag_values: flags.FlagValues) -> None:
  """The command line's flags (`barlow_jax.cli.Command`)."""
  fv = {"flag_values": flag_values}
  config_flags.DEFINE_config_file("config", None, "Experiment config file (FILE[:ARG]).", **fv)
  flags.DEFINE_string("out", "views.png", "Output PNG path.", **fv)
  flags.DEFINE_integer("pairs", 32, "Number of (view A, view B) pairs to draw.", **fv)
  flags.DEFINE_integer("step", 0, "Which training batch to draw them from.", **fv)
  flags.DEFINE_integer("columns", 4, "Pairs per row.", **fv)
  flags.mark_flags_as_required(["config"], **fv)


def render(config, out: str, *, pairs: int = 32, step: int = 0, columns: int = 4) -> str:
  """Draws `pairs` view pairs of batch `step` into the PNG `out`; returns its path."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  from barlow_jax import data

  if pairs <= 0 or columns <= 0:
    raise ValueError(f"--pairs and --columns must be positive, got {pairs} and {columns}.")
  config = config.copy_and_resolve_references()
  # One process, a batch of exactly the pairs drawn, at the config's own step numbering: batch
  # `step` of this stream is what a run with this batch size would see at that step.
  with config.unlocked():
    config.batch_size = pairs
  batch = next(
    data.create_pretrain_iterator(config, start_step=step, process_index=0, process_count=1)
  )
  views = [batch[k].astype(np.float32) / 255 for k in ("view_a", "view_b")]  # uint8 pixels.
  rows = math.ceil(pairs / columns)
  fig, axes = plt.subplots(
    rows, 2 * columns, figsize=(2 * columns * 1.3, rows * 1.45), squeeze=False
  )
  for ax in axes.flat:
    ax.axis("off")
  for i in range(pairs):
    r, c = divmod(i, columns)
    for v in range(2):
      ax = axes[r, 2 * c + v]
      ax.imshow(views[v][i], interpolation="nearest")
      name = "A" if v == 0 else "B"
      if "label" in batch and v == 0:
        name += f" (label {int(batch['label'][i])})"
      ax.set_title(name, fontsize=7)
  fig.suptitle(f"{config.dataset.name}: view pairs, batch {step}", fontsize=9)
  fig.tight_layout()
  target = epath.Path(out if "://" in out else os.path.abspath(out))  # Local or gs://.
  target.parent.mkdir(parents=True, exist_ok=True)
  with target.open("wb") as f:
    fig.savefig(f, dpi=100, format="png")
  plt.close(fig)
  return out


def _command(args: flags.FlagValues, argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  path = render(args.config, args.out, pairs=args.pairs, step=args.step, columns=args.columns)
  print(f"wrote {path}")


COMMAND = cli.Command(
  "python -m barlow_jax.tools.show_augmentations", define_flags, _command, __doc__
)

if __name__ == "__main__":
  COMMAND.run()

r"""Saves a grid of augmented view pairs (view A, view B) as the network receives them.

    python -m barlow_jax.tools.show_augmentations --config=configs/cluttered_digits.py \
        --out=views.png [--pairs=32] [--step=0]

The pairs are the first `--pairs` examples of training batch `--step` of the config's pretraining
stream (the same crops and colours training uses) after everything the train step does to them
before the network: with `config.augment.on_device` the colour operations the step applies on the
accelerator too (`barlow_jax.data.device_augment.prepare_views`, the step's own function). The
normalised input is mapped back to [0, 1] pixels (x * std + mean) to be drawn. Each cell shows
view A on the left and view B on the right, titled with the label when there is one. With
`config.model.standardize_input` the network's first layer then standardises each image
(`barlow_jax.resnet.standardize_images`); that step is part of the model, not drawn, and the
figure's title says so.
"""

import math
import os
from typing import Any

import numpy as np
from absl import app, flags
from etils import epath
from ml_collections import config_flags

from barlow_jax import cli

VIEWS = ("view_a", "view_b")


def define_flags(flag_values: flags.FlagValues) -> None:
  """The command line's flags (`barlow_jax.cli.Command`)."""
  fv = {"flag_values": flag_values}
  config_flags.DEFINE_config_file("config", None, "Experiment config file (FILE[:ARG]).", **fv)
  flags.DEFINE_string("out", "views.png", "Output PNG path.", **fv)
  flags.DEFINE_integer("pairs", 32, "Number of (view A, view B) pairs to draw.", **fv)
  flags.DEFINE_integer("step", 0, "Which training batch to draw them from.", **fv)
  flags.DEFINE_integer("columns", 4, "Pairs per row.", **fv)
  flags.mark_flags_as_required(["config"], **fv)


def network_views(batch: dict[str, Any], config, *, step: int = 0) -> dict[str, np.ndarray]:
  """The two views of a pretraining batch as the train step feeds them to the network, in pixels.

  Runs the step's own `device_augment.prepare_views` (uint8 views normalised by
  `config.augment.mean` / `std`; with `config.augment.on_device` the colour operations first, with
  the keys of training step `step`) and maps the normalised input back to [0, 1] pixels
  (x * std + mean), so a picture of it shows colours as a person would see them.

  Args:
    batch: {"view_a", "view_b": uint8 [B, S, S, 3]} from `data.create_pretrain_iterator`.
    config: the run config. step: the training step the batch belongs to.

  Returns:
    {"view_a", "view_b"}: float32 [B, S, S, 3] in [0, 1] (NumPy).

  Raises:
    ValueError: views that are not uint8 [B, S, S, 3] pixels.
  """
  import jax
  import jax.numpy as jnp

  from barlow_jax.data import device_augment

  for key in VIEWS:
    view = np.asarray(batch[key])
    if view.dtype != np.uint8 or view.ndim != 4 or view.shape[-1] != 3:
      raise ValueError(
        f"batch[{key!r}] must be the pipeline's uint8 [B, S, S, 3] views, got {view.dtype} "
        f"{view.shape}: draw a batch of data.create_pretrain_iterator."
      )
  prepare = jax.jit(lambda views, s: device_augment.prepare_views(views, s, config=config))
  inputs = prepare({k: jnp.asarray(batch[k]) for k in VIEWS}, jnp.asarray(step, jnp.int32))
  mean = np.asarray(config.augment.mean, np.float32)
  std = np.asarray(config.augment.std, np.float32)
  return {k: np.clip(np.asarray(x) * std + mean, 0.0, 1.0) for k, x in zip(VIEWS, inputs)}


def not_drawn(config) -> str:
  """What the network does to the views after the drawn step, in words ("" when nothing)."""
  if config.model.get("standardize_input", False):
    return "the network then standardises each image (config.model.standardize_input)"
  return ""


def pairs_figure(batch: dict[str, Any], config, *, step: int = 0, pairs: int = 8, columns: int = 8):
  """A matplotlib Figure of the first `pairs` view pairs of `batch`, as `network_views` gives them.

  Each drawn image's data is exactly `network_views(batch, config, step=step)[view][i]` (read it
  back with `fig.axes[j].images[0].get_array()`).

  Raises:
    ValueError: `pairs` or `columns` not positive, or more pairs than the batch holds.
  """
  import matplotlib.pyplot as plt

  if pairs <= 0 or columns <= 0:
    raise ValueError(f"--pairs and --columns must be positive, got {pairs} and {columns}.")
  if pairs > len(batch["view_a"]):
    raise ValueError(f"pairs={pairs} exceeds the batch's {len(batch['view_a'])} examples.")
  views = network_views(batch, config, step=step)
  columns = min(columns, pairs)
  rows = math.ceil(pairs / columns)
  fig, axes = plt.subplots(
    rows, 2 * columns, figsize=(2 * columns * 1.3, rows * 1.45 + 0.4), squeeze=False
  )
  for ax in axes.flat:
    ax.axis("off")
  for i in range(pairs):
    r, c = divmod(i, columns)
    for v, key in enumerate(VIEWS):
      ax = axes[r, 2 * c + v]
      ax.imshow(views[key][i], interpolation="nearest", vmin=0.0, vmax=1.0)
      name = "A" if v == 0 else "B"
      if "label" in batch and v == 0:
        name += f" (label {int(batch['label'][i])})"
      ax.set_title(name, fontsize=7)
  where = "colour ops on device" if config.augment.on_device else "colour ops on host"
  title = f"{config.dataset.name}: view pairs of batch {step} as the network gets them ({where})"
  if not_drawn(config):
    title += f";\n{not_drawn(config)}: not drawn"
  fig.suptitle(title, fontsize=8)
  fig.tight_layout()
  return fig


def render(config, out: str, *, pairs: int = 32, step: int = 0, columns: int = 4) -> str:
  """Draws `pairs` view pairs of batch `step` into the PNG `out` (`pairs_figure`); its path."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

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
  fig = pairs_figure(batch, config, step=step, pairs=pairs, columns=columns)
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
  if not_drawn(args.config):
    print(f"(as the network gets them, but {not_drawn(args.config)}: not drawn)")


COMMAND = cli.Command(
  "python -m barlow_jax.tools.show_augmentations", define_flags, _command, __doc__
)

if __name__ == "__main__":
  COMMAND.run()

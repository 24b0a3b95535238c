"""The reference's Barlow Twins training step in PyTorch: the peer of the step benchmark.

    python -m barlow_jax.benchmark step --peer=torch --batch=256 --image_size=224 --dtype=bfloat16

`reference` is the step as the reference (facebookresearch/barlowtwins, main.py) writes it, on one
device, with the network, loss and LARS of `barlow_jax.benchmarks.torch_reference` (what is
restated there and what is left out is in its docstring): fp16 autocast with GradScaler, as
main.py's `torch.cuda.amp` step.

`tuned` is what a PyTorch user would do for speed with the same model, loss and optimizer
arithmetic: bf16 autocast (no loss scaling needed), `channels_last` activations and weights,
`cudnn.benchmark`, TF32 matmuls, and the LARS update with `torch._foreach_*` kernels over all
parameters at once instead of a dozen small kernels per parameter. `tuned_compiled` adds
`torch.compile` of the forward pass and loss (opt-in: compilation takes minutes for a ResNet-50).
"""

import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch
from absl import app, flags

from barlow_jax import benchmarks, cli
from barlow_jax.benchmarks.torch_reference import (  # noqa: F401  (torch_peer's names before the split)
  LARS,
  BarlowTwins,
  BasicBlock,
  Bottleneck,
  ResNet,
  barlow_twins_loss,
  exclude_bias_and_norm,
  off_diagonal,
  reference_optimizer,
)

VARIANTS = ("reference", "tuned", "tuned_compiled")


def _synchronize(device: torch.device) -> None:
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def make_step(variant: str, model: BarlowTwins, device: torch.device, batch_size: int) -> Callable:
  """The training step of `variant` (see VARIANTS) as a closure `step(y1, y2) -> loss` whose last
  `skipped` attribute says whether GradScaler skipped the update (fp16 overflow)."""
  if variant not in VARIANTS:
    raise ValueError(f"torch peer variant {variant!r}: use one of {VARIANTS}")
  if variant == "reference":
    optimizer = reference_optimizer(model, batch_size)
    scaler = torch.amp.GradScaler(device.type)

    def step(y1, y2):
      optimizer.zero_grad()
      with torch.autocast(device.type, dtype=torch.float16):
        loss = model.forward(y1, y2)
      scale = scaler.get_scale()
      scaler.scale(loss).backward()
      scaler.step(optimizer)
      scaler.update()
      step.skipped = scaler.get_scale() < scale
      return loss

  else:
    optimizer = reference_optimizer(model, batch_size, foreach=True)
    forward = torch.compile(model) if variant == "tuned_compiled" else model

    def step(y1, y2):
      optimizer.zero_grad(set_to_none=True)
      with torch.autocast(device.type, dtype=torch.bfloat16):
        loss = forward(y1, y2)
      loss.backward()
      optimizer.step()
      step.skipped = False
      return loss

  step.skipped = False
  return step


def run_variant(
  variant: str,
  *,
  device: str | torch.device,
  backbone: str = "ResNet50",
  projector: Sequence[int] = (8192, 8192, 8192),
  width: float = 1.0,
  batch: int = 256,
  image_size: int = 224,
  steps: int = 20,
  warmup: int = 5,
  max_warmup: int = 50,
  seed: int = 0,
) -> dict:
  """Times `steps` training steps of one variant on a fixed device batch (two views, float32,
  normalised-pixel-like N(0, 1) values), each step synchronised, after `warmup` untimed steps (at
  least one; extended, up to `max_warmup`, while GradScaler still skips updates to find its scale).

  Returns a dict: images_per_second (examples, i.e. pairs of views, per second, from the median
  step time), step_seconds (median), times_s, skipped_steps (timed steps whose update GradScaler
  skipped), warmup_steps, loss (last), device, variant, and the settings.
  """
  device = torch.device(device)
  model, y1, y2 = _model_and_views(
    variant, device, backbone, projector, width, batch, image_size, seed
  )
  step = make_step(variant, model, device, batch)
  start = time.perf_counter()
  warmup_steps = _warm_up(step, (y1, y2), warmup=warmup, max_warmup=max_warmup)
  _synchronize(device)
  warmup_seconds = time.perf_counter() - start
  times, skipped, loss = _timed_steps(step, (y1, y2), steps, device)
  median = statistics.median(times) if times else math.nan
  result = {
    "variant": variant,
    "device": _device_name(device),
    "torch": torch.__version__,
    "backbone": backbone,
    "projector": list(projector),
    "batch": batch,
    "image_size": image_size,
    "autocast_dtype": "float16" if variant == "reference" else "bfloat16",
    "steps": steps,
    "warmup_seconds": warmup_seconds,
    "warmup_steps": warmup_steps,
    "step_seconds": median,
    "times_s": times,
    "images_per_second": batch / median if times else math.nan,
    "skipped_steps": skipped,
    "loss": float(loss.detach().float().cpu()),
  }
  del model, step, y1, y2
  if device.type == "cuda":
    result["peak_bytes"] = torch.cuda.max_memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    torch.cuda.empty_cache()
  return result


def _model_and_views(variant, device, backbone, projector, width, batch, image_size, seed):
  """The seeded model and its two fixed N(0, 1) views on `device`, in the variant's layout."""
  if variant != "reference" and device.type == "cuda":
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
  torch.manual_seed(seed)
  model = BarlowTwins(backbone, projector, batch_size=batch, width=width).to(device)
  generator = torch.Generator(device="cpu").manual_seed(seed)
  shape = (batch, 3, image_size, image_size)
  y1, y2 = (torch.randn(shape, generator=generator).to(device) for _ in range(2))
  if variant != "reference":
    model = model.to(memory_format=torch.channels_last)
    y1, y2 = (y.contiguous(memory_format=torch.channels_last) for y in (y1, y2))
  return model, y1, y2


def _warm_up(step: Callable, views, *, warmup: int, max_warmup: int) -> int:
  """Runs `warmup` steps (at least one), more (up to `max_warmup`) while GradScaler skips."""
  warmup_steps = 0
  for _ in range(max(warmup, max_warmup)):
    step(*views)
    warmup_steps += 1
    if warmup_steps >= warmup and not step.skipped:
      break
  return warmup_steps


def _timed_steps(step: Callable, views, steps: int, device: torch.device):
  """(seconds of each synchronised step, how many GradScaler skipped, the last loss)."""
  times, skipped = [], 0
  loss = torch.zeros(())
  for _ in range(steps):
    t = time.perf_counter()
    loss = step(*views)
    _synchronize(device)
    times.append(time.perf_counter() - t)
    skipped += bool(step.skipped)
  return times, skipped, loss


def _device_name(device: torch.device) -> str:
  if device.type == "cuda":
    return torch.cuda.get_device_name(device)
  return f"cpu ({torch.get_num_threads()} threads)"


def default_device() -> str:
  return "cuda" if torch.cuda.is_available() else "cpu"


def run_peers(variants: Sequence[str], **kwargs) -> list[dict]:
  """`run_variant` for each of `variants`; a variant that fails is reported, not raised."""
  results = []
  for variant in variants:
    try:
      results.append(run_variant(variant, **kwargs))
    except Exception as e:  # noqa: BLE001 -- one failing variant must not lose the others.
      results.append({"variant": variant, "error": f"{type(e).__name__}: {e}"[:500]})
      if torch.cuda.is_available():
        torch.cuda.empty_cache()
    outcome = results[-1].get("error") or f"{results[-1].get('images_per_second')} images/s"
    print(f"[torch peer] {variant}: {outcome}", file=sys.stderr, flush=True)
  return results


def define_flags(flag_values: flags.FlagValues) -> None:
  """`python -m barlow_jax.benchmarks.torch_peer`'s flags (`barlow_jax.cli.Command`)."""
  fv = {"flag_values": flag_values}
  flags.DEFINE_multi_enum(
    "variants", ["reference", "tuned"], VARIANTS, "the PyTorch steps to time", **fv
  )
  flags.DEFINE_string("device", "auto", "'auto': cuda if available, else cpu", **fv)
  benchmarks.define_shared_flags(
    flag_values,
    backbone="ResNet50",
    width=1.0,
    projector="8192-8192-8192",
    batch=256,
    image_size=224,
    steps=20,
    warmup=5,
    out="",
  )


def _command(args: flags.FlagValues, argv: list[str]) -> int:
  import json

  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  results = run_peers(
    args.variants,
    device=default_device() if args.device == "auto" else args.device,
    backbone=args.backbone,
    projector=[int(s) for s in args.projector.split("-")],
    width=args.width,
    batch=args.batch,
    image_size=args.image_size,
    steps=args.steps,
    warmup=args.warmup,
  )
  for r in results:
    rate = r.get("error") or f"{r['images_per_second']:.1f} images/s on {r['device']}"
    print(f"PyTorch {r['variant']}: {rate}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"variants": results}, f, indent=2)
  return 0


COMMAND = cli.Command("python -m barlow_jax.benchmarks.torch_peer", define_flags, _command, __doc__)


def main(argv: Sequence[str] | None = None) -> int:
  """`python -m barlow_jax.benchmarks.torch_peer`: the PyTorch peers alone, as JSON; in-process
  `argv` is without the program name (default `sys.argv[1:]`)."""
  return COMMAND(["", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
  COMMAND.run()

"""The colour augmentations on the accelerator, inside the jitted train step (pure jax).

With `config.augment.on_device`, the host only decodes, crops and flips, and sends uint8 crops;
this module then applies, per example and per view, the rest of the view's transform
(`barlow_jax.data.augment` is the host version of the same functions, on the same [0, 1] pixels):

  1. colour jitter with `jitter_prob`: brightness, contrast, saturation and hue in a random order
     (torchvision `ColorJitter` semantics on float images, clipped to [0, 1] after each op),
  2. random RGB channel permutation with `channel_permute_prob`,
  3. grayscale (ITU-R 601-2 luma, replicated to 3 channels) with `grayscale_prob`,
  4. Gaussian blur with `blur_prob`, sigma ~ U(blur_sigma): PIL's `ImageFilter.GaussianBlur`
     (the Barlow Twins reference main.py's `GaussianBlur`), see `device_colour.gaussian_blur`,
  5. solarize (x -> 1 - x where x >= `solarize_threshold`) with `solarize_prob`,
  6. additive Gaussian noise of std `noise_std`, clipped to [0, 1],

then normalises by `config.augment.mean` / `std`. Every op runs on every example and a select
keeps it where it fired (no data-dependent control flow under `vmap`).

Randomness: the parameters of example i of the global batch at step t, view v (0 = view_a,
1 = view_b) come from the key `key(seed)` folded with a constant of this module, then t, i and v
(`example_keys`).
They depend on the global position in the batch, not on the device holding it, so a run is the
same on any device count, and the step is in the checkpoint, so a resumed run draws the same
parameters for the same batch.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from barlow_jax.data.device_colour import (
  adjust_hue,
  blend,
  blur_radius,
  gaussian_blur,
  normalize,
  solarize,
  to_grayscale,
  to_unit,
)

# Separates these keys from the network initialisation's `key(seed)`.
_DOMAIN = 0xA06_0DE5
_VIEWS = ("view_a", "view_b")
# Slots of the per-example decision draw; the host's `augment.APPLIED_KEYS` less "flip".
APPLIED_KEYS = ("jitter", "channel_permute", "grayscale", "blur", "solarize")
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


# ---------------------------------------------------------------------------------------------
# Config checks.


def _view_settings(view: Mapping[str, Any], name: str) -> dict:
  """The view's settings (its ConfigDict, or that as a dict) as Python numbers; ValueError
  naming the key when one is out of range."""
  out = {}
  for key in ("jitter_prob", "channel_permute_prob", "grayscale_prob", "blur_prob"):
    out[key] = float(view[key])
  out["solarize_prob"] = float(view["solarize_prob"])
  for key, value in out.items():
    if not 0.0 <= value <= 1.0:
      raise ValueError(f"config.augment.{name}.{key} must be a probability in [0, 1], got {value}.")
  for key in ("brightness", "contrast", "saturation", "noise_std"):
    out[key] = float(view[key])
    if out[key] < 0:
      raise ValueError(f"config.augment.{name}.{key} must be >= 0, got {out[key]}.")
  out["hue"] = float(view["hue"])
  if not 0.0 <= out["hue"] <= 0.5:
    raise ValueError(
      f"config.augment.{name}.hue must be in [0, 0.5] (a fraction of a full turn), "
      f"got {out['hue']}."
    )
  lo, hi = (float(s) for s in view["blur_sigma"])
  if not 0 < lo <= hi:
    raise ValueError(f"config.augment.{name}.blur_sigma must satisfy 0 < min <= max, got {lo, hi}.")
  out["blur_sigma"] = (lo, hi)
  out["solarize_threshold"] = float(view["solarize_threshold"])
  return out


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks `config.augment` for the device path (mean / std always, the views if on_device).

  Raises:
    ValueError: naming the config key and the accepted range.
  """
  validate_normalisation(config.augment.mean, config.augment.std)
  if config.augment.on_device:
    for name in _VIEWS:
      _view_settings(config.augment[name], name)


def validate_normalisation(mean: Sequence[float], std: Sequence[float]) -> None:
  """Checks `config.augment.mean` / `std` (given as their values): 3 each, std > 0.

  Raises:
    ValueError: naming both keys (a length) or `config.augment.std` (a value).
  """
  mean, std = tuple(mean), tuple(std)
  if len(mean) != 3 or len(std) != 3:
    raise ValueError(f"config.augment.mean and std need 3 values (RGB), got {mean} and {std}.")
  if min(std) <= 0:
    raise ValueError(f"config.augment.std must be > 0 per channel, got {std}.")


# ---------------------------------------------------------------------------------------------
# Per-example parameters and the view transform.


def example_keys(seed: int, step, batch_size: int, view: int) -> jax.Array:
  """The keys [batch_size] of one view of each example of the global batch at `step`."""
  base = jax.random.fold_in(jax.random.key(int(seed)), _DOMAIN)
  base = jax.random.fold_in(base, jnp.asarray(step, jnp.uint32))
  indices = jnp.arange(batch_size, dtype=jnp.uint32)
  return jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(base, i), view))(indices)


def sample_params(key: jax.Array, view: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """One example's random parameters (vmap over keys for a batch).

  Returns:
    {"applied": bool [5] (`APPLIED_KEYS`), "order": int32 [4] (indices into `JITTER_OPS`,
     applied first to last), "factors": float32 [4] (brightness, contrast, saturation factors
     ~ U(max(0, 1 - s), 1 + s), hue delta ~ U(-hue, hue)), "permutation": int32 [3],
     "sigma": float32 scalar ~ U(blur_sigma), "noise_key": key}.
  """
  s = _view_settings(view, "view")
  k_apply, k_order, k_factor, k_perm, k_sigma, k_noise = jax.random.split(key, 6)
  probs = jnp.asarray([s[f"{name}_prob"] for name in APPLIED_KEYS], jnp.float32)
  u = jax.random.uniform(k_factor, (4,))
  lows = [max(0.0, 1.0 - s[name]) for name in JITTER_OPS[:3]] + [-s["hue"]]
  highs = [1.0 + s[name] for name in JITTER_OPS[:3]] + [s["hue"]]
  lo_a, hi_a = jnp.asarray(lows, jnp.float32), jnp.asarray(highs, jnp.float32)
  lo, hi = s["blur_sigma"]
  return {
    "applied": jax.random.uniform(k_apply, (len(APPLIED_KEYS),)) < probs,
    "order": jax.random.permutation(k_order, 4).astype(jnp.int32),
    "factors": lo_a + (hi_a - lo_a) * u,
    "permutation": jax.random.permutation(k_perm, 3).astype(jnp.int32),
    "sigma": jax.random.uniform(k_sigma, (), minval=lo, maxval=hi),
    "noise_key": k_noise,
  }


def color_jitter(image, order, factors, *, strengths: Sequence[float]):
  """The four jitter ops in `order` with `factors` (see `sample_params`); ops of strength 0 skip.

  Under vmap a switch runs every branch, so each position blends once (brightness, contrast and
  saturation are one blend against black / the mean gray level / the grayscale image) and
  computes the hue shift, and keeps the one the order names.
  """
  enabled_ops = jnp.asarray([float(v) > 0 for v in strengths])
  hue = float(strengths[3]) > 0

  def position(index, image):  # A rolled loop: the body compiles once, not four times.
    op = order[index]
    gray = to_grayscale(image)
    target = jnp.where(op == 1, jnp.mean(gray[..., 0]), jnp.where(op == 2, gray, 0.0))
    out = blend(image, target, factors[jnp.minimum(op, 2)])
    if hue:
      out = jnp.where(op == 3, adjust_hue(image, factors[3]), out)
    return jnp.where(enabled_ops[op], out, image)

  return jax.lax.fori_loop(0, 4, position, image)


def augment_image(image: jax.Array, params: Mapping[str, jax.Array], view) -> jax.Array:
  """Steps 1-6 of the module doc on one cropped view with given parameters (`sample_params`).

  Args:
    image: float32 [S, S, 3] in [0, 1].
    params: one example's parameters.
    view: `config.augment.view_a` / `view_b`.

  Returns:
    float32 [S, S, 3] in [0, 1].
  """
  s = _view_settings(view, "view")
  applied = dict(zip(APPLIED_KEYS, params["applied"]))
  if s["jitter_prob"] > 0:
    strengths = [s[name] for name in JITTER_OPS]
    jittered = color_jitter(image, params["order"], params["factors"], strengths=strengths)
    image = jnp.where(applied["jitter"], jittered, image)
  if s["channel_permute_prob"] > 0:
    permuted = jnp.take(image, params["permutation"], axis=-1)
    image = jnp.where(applied["channel_permute"], permuted, image)
  if s["grayscale_prob"] > 0:
    image = jnp.where(applied["grayscale"], to_grayscale(image), image)
  if s["blur_prob"] > 0:
    radius = blur_radius(s["blur_sigma"][1])
    blurred = gaussian_blur(image, params["sigma"], radius=radius)
    image = jnp.where(applied["blur"], blurred, image)
  if s["solarize_prob"] > 0:
    image = jnp.where(applied["solarize"], solarize(image, s["solarize_threshold"]), image)
  if s["noise_std"] > 0:
    noise = s["noise_std"] * jax.random.normal(params["noise_key"], image.shape)
    image = jnp.clip(image + noise, 0.0, 1.0)
  return image


def augment_views(pixels: jax.Array, keys: jax.Array, view) -> jax.Array:
  """`augment_image` over a batch: pixels [B, S, S, 3] uint8 (or float in [0, 1]), keys [B].

  Returns:
    float32 [B, S, S, 3] in [0, 1], not normalised.
  """
  params = jax.vmap(lambda k: sample_params(k, view))(keys)
  return jax.vmap(lambda x, p: augment_image(x, p, view))(to_unit(pixels), params)


@dataclasses.dataclass(frozen=True)
class StepViews:
  """What the train step does to a batch's views, as plain values read once from the config.

  Attributes:
    mean, std: `config.augment.mean` / `std` (3 each, on [0, 1] pixels).
    on_device: `config.augment.on_device`: the colour ops run here.
    seed: `config.seed` (the per-example keys, `example_keys`).
    view_a, view_b: `config.augment.view_a` / `view_b` as dicts (`to_dict()`); read with
      `on_device` only.
  """

  mean: tuple[float, ...]
  std: tuple[float, ...]
  on_device: bool = False
  seed: int = 0
  view_a: Mapping[str, Any] | None = None
  view_b: Mapping[str, Any] | None = None


def step_views_of(config: ml_collections.ConfigDict) -> StepViews:
  """The `StepViews` of `config` (`seed`, `augment`)."""
  augment = config.augment
  return StepViews(
    mean=tuple(augment.mean),
    std=tuple(augment.std),
    on_device=bool(augment.on_device),
    seed=int(config.seed),
    view_a=augment.view_a.to_dict(),
    view_b=augment.view_b.to_dict(),
  )


def augment_batch(
  batch: Mapping[str, jax.Array], step, *, config: ml_collections.ConfigDict
) -> dict[str, jax.Array]:
  """Both views of a global batch through the device colour augmentations, then normalised.

  Jittable alone (`jax.jit(functools.partial(augment_batch, config=config))`), which is how the
  step benchmark times it and reads its FLOPs.

  Args:
    batch: {"view_a", "view_b"}: [B, S, S, 3] uint8 crops (or float pixels in [0, 1]), B the
      global batch.
    step: int scalar, the training step (the updates done before this batch).
    config: the run config (`config.seed`, `config.augment`).

  Returns:
    {"view_a", "view_b"}: float32 [B, S, S, 3], normalised by `config.augment.mean` / `std`.
  """
  validate_config(config)
  return _augment_batch(batch, step, step_views_of(config))


def _augment_batch(batch, step, settings: StepViews) -> dict[str, jax.Array]:
  out = {}
  for index, name in enumerate(_VIEWS):
    pixels = batch[name]
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
      raise ValueError(f"batch[{name!r}] must be [B, S, S, 3] pixels, got shape {pixels.shape}.")
    keys = example_keys(settings.seed, step, pixels.shape[0], index)
    augmented = augment_views(pixels, keys, getattr(settings, name))
    out[name] = normalize(augmented, settings.mean, settings.std)
  return out


def prepare_views(batch: Mapping[str, jax.Array], step, *, config) -> tuple[jax.Array, jax.Array]:
  """The network's two inputs from a pretraining batch, inside the train step.

  - `config.augment.on_device`: uint8 crops -> `augment_batch` (colour ops, then normalised).
  - otherwise: uint8 views are normalised ((x / 255 - mean) / std); float views are taken as
    already normalised by the host (the float path of older pipelines), unchanged.

  Raises:
    ValueError: on_device with float views (the host already normalised them: set the input
      pipeline to send uint8 crops) or views that are not [B, S, S, 3].
  """
  return step_views(batch, step, step_views_of(config))


def step_views(
  batch: Mapping[str, jax.Array], step, settings: StepViews
) -> tuple[jax.Array, jax.Array]:
  """`prepare_views` of the settings read once (`step_views_of(config)`, or the train step's)."""
  views = [batch[name] for name in _VIEWS]
  if settings.on_device:
    for name, view in zip(_VIEWS, views):
      if view.dtype != jnp.uint8:
        raise ValueError(
          f"config.augment.on_device=True needs the host's un-normalised uint8 crops, but "
          f"batch[{name!r}] is {view.dtype}: the input pipeline must send uint8 [B, S, S, 3] "
          "views (it does when config.augment.on_device is set), or set on_device=False."
        )
    validate_normalisation(settings.mean, settings.std)
    for name in _VIEWS:
      _view_settings(getattr(settings, name), name)  # Names the key out of range.
    out = _augment_batch(batch, step, settings)
    return out["view_a"], out["view_b"]
  mean, std = settings.mean, settings.std
  return tuple(normalize(to_unit(v), mean, std) if v.dtype == jnp.uint8 else v for v in views)

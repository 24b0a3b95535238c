"""Pictures of the views show what the train step feeds the network (issue 26, item 6)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from barlow_jax import data  # noqa: E402
from barlow_jax.tools import show_augmentations  # noqa: E402
from configs import cluttered_digits  # noqa: E402

_LUMA = np.array([0.299, 0.587, 0.114])


def _config(on_device: bool, **view):
  config = cluttered_digits.get_config()
  config.batch_size = 8
  config.augment.on_device = on_device
  for name in ("view_a", "view_b"):
    for key, value in view.items():
      config.augment[name][key] = value
  return config


def _batch(config):
  return next(data.create_pretrain_iterator(config, process_index=0, process_count=1))


@pytest.fixture(scope="module")
def host():
  config = _config(on_device=False)
  return config, _batch(config)


def _drawn(fig) -> list[np.ndarray]:
  """The data of every image in the figure, in drawing order (A, B of pair 0, then pair 1, ...)."""
  return [np.asarray(im.get_array(), np.float64) for ax in fig.axes for im in ax.images]


def _stats(images) -> tuple[float, float, float]:
  x = np.stack(images)
  return float(x.min()), float(x.max()), float(x.mean())


def test_host_augmented_views_are_drawn_as_their_pixels(host):
  config, batch = host
  fig = show_augmentations.pairs_figure(batch, config, pairs=4, columns=2)
  drawn = _drawn(fig)
  plt.close(fig)
  # The float64 restatement of the network's input mapped back to pixels: uint8 / 255.
  expected = [batch[k][i].astype(np.float64) / 255 for i in range(4) for k in ("view_a", "view_b")]
  assert len(drawn) == 8
  np.testing.assert_allclose(_stats(drawn), _stats(expected), atol=1e-6)
  for got, want in zip(drawn, expected):
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_on_device_colour_ops_are_drawn():
  # Every colour op off but grayscale (always on): the step's input is the crops' luma, so a
  # picture of the host's uint8 crops (colour) is not what the network gets.
  off = dict(
    jitter_prob=0.0, channel_permute_prob=0.0, blur_prob=0.0, solarize_prob=0.0, noise_std=0.0
  )
  config = _config(on_device=True, grayscale_prob=1.0, **off)
  batch = _batch(config)
  fig = show_augmentations.pairs_figure(batch, config, pairs=4, columns=4)
  drawn = _drawn(fig)
  plt.close(fig)
  crops = [batch[k][i].astype(np.float64) / 255 for i in range(4) for k in ("view_a", "view_b")]
  expected = [np.repeat((c @ _LUMA)[..., None], 3, axis=-1) for c in crops]
  assert max(float(np.ptp(c, axis=-1).max()) for c in crops) > 0.3  # The crops have colour.
  np.testing.assert_allclose(_stats(drawn), _stats(expected), atol=1e-5)
  for got, want in zip(drawn, expected):
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_the_figure_says_what_it_leaves_out(host):
  config, batch = host
  config = config.copy_and_resolve_references()
  fig = show_augmentations.pairs_figure(batch, config, pairs=2)
  assert "standardize_input" in fig._suptitle.get_text()
  plt.close(fig)
  config.model.standardize_input = False
  fig = show_augmentations.pairs_figure(batch, config, pairs=2)
  assert "not drawn" not in fig._suptitle.get_text()
  plt.close(fig)


def test_float_views_are_refused(host):
  config, batch = host
  floats = {k: batch[k].astype(np.float32) for k in ("view_a", "view_b")}
  with pytest.raises(ValueError, match="uint8"):
    show_augmentations.network_views(floats, config)

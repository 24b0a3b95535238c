"""The augmentation ops: exact on known pixels, against float64 NumPy restatements, in tf.data and
eagerly, and with the configured frequencies per view."""

import io

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from barlow_jax import config as config_lib  # noqa: E402
from barlow_jax.data import augment, colour, crop  # noqa: E402

LUMA = np.array([0.299, 0.587, 0.114])


def _image(h=12, w=10, seed=0):
  return np.random.RandomState(seed).uniform(size=(h, w, 3)).astype(np.float32)


def _view(**overrides):
  view = config_lib.base_config().augment.view_a
  for k, v in overrides.items():
    view[k] = v
  return view


def _all_off(**overrides):
  base = dict(
    flip_prob=0.0,
    jitter_prob=0.0,
    grayscale_prob=0.0,
    blur_prob=0.0,
    solarize_prob=0.0,
    channel_permute_prob=0.0,
    noise_std=0.0,
  )
  base.update(overrides)
  return _view(**base)


def test_full_view_eager_and_in_tf_data_agree_with_shape_dtype_range():
  config = config_lib.base_config()
  image = (_image(40, 30) * 255).astype(np.uint8)
  seeds = [augment.example_seed(0, 0, i, 1) for i in range(4)]
  kwargs = dict(size=16, mean=config.augment.mean, std=config.augment.std)
  eager = [augment.augment_view(image, s, config.augment.view_b, **kwargs).numpy() for s in seeds]
  ds = tf.data.Dataset.range(4).map(
    lambda i: augment.augment_view(
      image, augment.example_seed(0, 0, i, 1), config.augment.view_b, **kwargs
    )
  )
  in_data = list(ds.as_numpy_iterator())
  mean, std = np.array(config.augment.mean), np.array(config.augment.std)
  for a, b in zip(eager, in_data):
    assert a.shape == (16, 16, 3) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-6)
    pixels = a * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
  assert not np.allclose(eager[0], eager[1])  # Different examples, different views.


def test_each_op_keeps_shape_dtype_and_range_inside_tf_data():
  image = _image(8, 8)
  seed = augment.example_seed(3, 1, 2, 0)
  ops = {
    "flip": lambda x: colour.flip_left_right(x),
    "jitter": lambda x: colour.color_jitter(x, seed, hue=0.5),
    "gray": colour.to_grayscale,
    "blur": lambda x: colour.gaussian_blur(x, 1.5, radius=colour.blur_radius(2.0)),
    "solarize": colour.solarize,
    "permute": lambda x: colour.permute_channels(x, seed),
    "crop": lambda x: crop.random_resized_crop(x, seed, size=6),
  }
  for name, op in ops.items():
    eager = op(tf.constant(image)).numpy()
    inside = next(iter(tf.data.Dataset.from_tensors(image).map(op).as_numpy_iterator()))
    np.testing.assert_allclose(eager, inside, atol=1e-6, err_msg=name)
    assert eager.dtype == np.float32, name
    assert eager.shape == ((6, 6, 3) if name == "crop" else (8, 8, 3)), name
    assert eager.min() >= 0 and eager.max() <= 1, name


def test_flip_solarize_grayscale_exact_on_known_pixels():
  image = np.array([[[0.1, 0.2, 0.3], [0.5, 0.6, 0.9]]], np.float32)  # [1, 2, 3]
  np.testing.assert_array_equal(colour.flip_left_right(image).numpy(), image[:, ::-1])
  solar = colour.solarize(tf.constant(image), 0.5).numpy()
  np.testing.assert_allclose(solar, [[[0.1, 0.2, 0.3], [0.5, 0.4, 1 - 0.9]]], atol=1e-7)
  solar = colour.solarize(tf.constant(image), 0.6).numpy()  # A pixel at the threshold flips.
  np.testing.assert_allclose(solar, [[[0.1, 0.2, 0.3], [0.5, 1 - 0.6, 1 - 0.9]]], atol=1e-7)
  gray = colour.to_grayscale(tf.constant(image)).numpy()
  expect = image.astype(np.float64) @ LUMA
  np.testing.assert_allclose(gray, np.repeat(expect[..., None], 3, -1), rtol=1e-6)


def test_blur_preserves_a_constant_image_and_sizes_its_kernel_from_sigma_max():
  # The kernel itself is tested against Pillow's box passes in test_blur.py.
  const = np.full((8, 8, 3), 0.37, np.float32)
  blurred = colour.gaussian_blur(tf.constant(const), 2.0, radius=6).numpy()
  np.testing.assert_allclose(blurred, const, rtol=1e-6)
  assert colour.blur_radius(2.0) == 6 and colour.blur_radius(2.0, 5) == 6  # Edges extend.


def _grating(period=2.2, size=400):
  x = np.arange(size)
  row = 0.5 + 0.5 * np.cos(2 * np.pi * x / period)
  return np.repeat(np.repeat(row[None, :, None], size, 0), 3, 2).astype(np.float32)


def test_crop_resize_antialiases_like_pil_on_a_grating_and_a_photo():
  from PIL import Image
  from sklearn.datasets import load_sample_image

  grating = _grating()  # 2.2 px period: far above 224 px's Nyquist limit once downscaled.
  whole = dict(size=224, area=(1.0, 1.0), aspect=(1.0, 1.0), method="bicubic")
  ours = crop.random_resized_crop(grating, [0, 0], **whole).numpy()
  pil = np.asarray(Image.fromarray(grating[..., 0], mode="F").resize((224, 224), Image.BICUBIC))
  assert pil.std() < 0.02 and ours.std() < 0.02, (pil.std(), ours.std())  # Aliased: 0.25.
  photo = load_sample_image("china.jpg")  # 427 x 640.
  for method, pil_method in (("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)):
    ours = crop.resize_image(photo.astype(np.float32) / 255, [224, 224], method).numpy()
    pil = np.asarray(Image.fromarray(photo).resize((224, 224), pil_method))
    diff = np.abs(ours * 255 - pil)
    assert diff.mean() < 0.6 and np.percentile(diff, 99) < 2.0, (method, diff.mean())


def test_eval_resize_is_torchvision_resize_then_centre_crop_like_pil():
  from PIL import Image
  from sklearn.datasets import load_sample_image

  photo = load_sample_image("flower.jpg")[:, 3:-2]  # 427 x 635: an odd crop offset.
  for method, pil_method in (("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC)):
    ours = crop.eval_resize_crop(photo, size=224, resize=256, method=method).numpy()
    # torchvision Resize(256): short side 256, long side int(256 * 635 / 427) = 380; then
    # CenterCrop(224): offsets round(16.0) = 16 and round(78.0) = 78.
    resized = Image.fromarray(photo).resize((380, 256), pil_method)
    pil = np.asarray(resized)[16:240, 78:302]
    diff = np.abs(ours * 255 - pil)
    assert ours.shape == (224, 224, 3)
    assert diff.mean() < 0.6 and np.percentile(diff, 99) < 2.0, (method, diff.mean())
  with pytest.raises(ValueError, match="eval_interpolation"):
    crop.eval_resize_crop(photo, size=224, resize=256, method="lanczos")


def test_jitter_ops_match_torchvision_semantics_in_float64():
  image = _image(6, 5).astype(np.float64)
  gray = image @ LUMA
  f = 1.3
  np.testing.assert_allclose(
    colour.adjust_brightness(tf.constant(image, tf.float32), f).numpy(),
    np.clip(f * image, 0, 1),
    rtol=1e-5,
  )
  np.testing.assert_allclose(
    colour.adjust_contrast(tf.constant(image, tf.float32), f).numpy(),
    np.clip(f * image + (1 - f) * gray.mean(), 0, 1),
    rtol=1e-5,
  )
  np.testing.assert_allclose(
    colour.adjust_saturation(tf.constant(image, tf.float32), f).numpy(),
    np.clip(f * image + (1 - f) * gray[..., None], 0, 1),
    rtol=1e-5,
  )
  import colorsys

  pixel = (0.8, 0.3, 0.1)
  h, s, v = colorsys.rgb_to_hsv(*pixel)
  expect = colorsys.hsv_to_rgb((h + 0.25) % 1.0, s, v)
  got = colour.adjust_hue(tf.constant([[pixel]], tf.float32), 0.25).numpy()[0, 0]
  np.testing.assert_allclose(got, expect, atol=1e-5)


def test_jitter_order_is_random():
  # Brightness then contrast differs from contrast then brightness after clipping; over many
  # seeds the jittered output of one image must take more than one value for fixed factors.
  image = tf.constant(_image(4, 4))
  outs = {
    colour.color_jitter(image, [i, 7], brightness=0.0, contrast=0.0, saturation=0.5, hue=0.3)
    .numpy()
    .round(4)
    .tobytes()
    for i in range(6)
  }
  assert len(outs) == 6


def test_crop_window_is_in_bounds_and_falls_back_to_a_centre_crop():
  for i in range(50):
    y, x, h, w = crop.crop_window(30, 17, [i, 1], area=(0.08, 1.0), aspect=(0.75, 4 / 3))
    y, x, h, w = (int(v) for v in (y, x, h, w))
    assert 0 <= y and y + h <= 30 and 0 <= x and x + w <= 17 and h > 0 and w > 0
  # A 100x10 strip can't hold a full-area box of aspect 3/4..4/3: the fallback is the centred
  # box of aspect 3/4 (width 10, height round(10 / 0.75) = 13).
  window = crop.crop_window(100, 10, [0, 0], area=(1.0, 1.0), aspect=(0.75, 4 / 3)).numpy()
  np.testing.assert_array_equal(window, [(100 - 13) // 2, 0, 13, 10])


def test_fused_jpeg_decode_and_crop_equals_decode_then_crop():
  image = (_image(50, 40, seed=3) * 255).astype(np.uint8)
  jpeg = tf.io.encode_jpeg(image, quality=95)
  seed = [4, 2]
  fused = crop.decode_and_random_resized_crop(jpeg, seed, size=16).numpy()
  plain = crop.random_resized_crop(tf.io.decode_jpeg(jpeg, channels=3), seed, size=16).numpy()
  np.testing.assert_allclose(fused, plain, atol=2 / 255)


def test_decode_image_converts_gray_rgba_and_16_bit_png():
  from PIL import Image

  def png(array, mode):
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()

  gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
  rgba = np.dstack([np.full((3, 4, 3), 200, np.uint8), np.full((3, 4), 7, np.uint8)])
  deep = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
  out_gray = crop.decode_image(png(gray, "L")).numpy()
  out_rgba = crop.decode_image(png(rgba, "RGBA")).numpy()
  out_deep = crop.decode_image(tf.io.encode_png(deep[..., None])).numpy()
  for out in (out_gray, out_rgba, out_deep):
    assert out.shape == (3, 4, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out_gray[..., 1], gray / 255, atol=1e-6)
  np.testing.assert_allclose(out_rgba, 200 / 255, atol=1e-6)
  np.testing.assert_allclose(out_deep[..., 0], deep / 65535, atol=1e-4)


def test_normalize_is_mean_std():
  image = _image(3, 3)
  mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
  np.testing.assert_allclose(
    colour.normalize(image, mean, std).numpy(), (image - np.array(mean)) / np.array(std), rtol=1e-5
  )


def _rates(view, n=3000, size=8):
  """Fraction of n draws in which each random op fired (vectorised through tf.data)."""
  image = tf.constant(_image(size, size))

  def one(i):
    seed = augment.example_seed(0, 0, i, 0)
    out, applied = augment.augment_cropped(image, seed, view, return_applied=True)
    return out, applied

  counts = dict.fromkeys(augment.APPLIED_KEYS, 0)
  gray = 0
  ds = tf.data.Dataset.range(n).map(one, num_parallel_calls=tf.data.AUTOTUNE).batch(500)
  for out, applied in ds.as_numpy_iterator():
    for k in counts:
      counts[k] += int(applied[k].sum())
    gray += int(np.all(np.abs(out - out[..., :1]) < 1e-6, axis=(1, 2, 3)).sum())
  return {k: v / n for k, v in counts.items()}, gray / n


@pytest.mark.parametrize("which", ["view_a", "view_b"])
def test_op_frequencies_match_the_config(which):
  view = config_lib.base_config().augment[which]
  n = 3000
  rates, gray_rate = _rates(view, n)
  expected = {
    "flip": view.flip_prob,
    "jitter": view.jitter_prob,
    "channel_permute": view.channel_permute_prob,
    "grayscale": view.grayscale_prob,
    "blur": view.blur_prob,
    "solarize": view.solarize_prob,
  }
  for key, p in expected.items():
    se = max(np.sqrt(p * (1 - p) / n), 1e-9)
    assert abs(rates[key] - p) <= 3 * se, (which, key, rates[key], p)
  # The effect, not just the decision: gray outputs appear at the grayscale rate.
  p = view.grayscale_prob
  assert abs(gray_rate - p) <= 3 * np.sqrt(p * (1 - p) / n)


def test_view_a_is_never_solarized_by_default():
  # A flat 0.7 image (jitter off): only solarisation can bring pixels below 0.5 (to 0.3).
  image = tf.fill([8, 8, 3], 0.7)

  def solarized_fraction(view, view_index, n=500):
    view.jitter_prob = 0.0
    ds = tf.data.Dataset.range(n).map(
      lambda i: augment.augment_cropped(image, augment.example_seed(0, 0, i, view_index), view)
    )
    batch = next(ds.batch(n).as_numpy_iterator())
    return (batch.max(axis=(1, 2, 3)) < 0.5).mean()

  augmentations = config_lib.base_config().augment
  assert augmentations.view_a.solarize_prob == 0.0
  assert solarized_fraction(augmentations.view_a, 0) == 0.0
  assert abs(solarized_fraction(augmentations.view_b, 1) - 0.2) <= 3 * np.sqrt(0.2 * 0.8 / 500)


def test_same_seed_same_view_and_bad_probability_is_a_clear_error():
  image = tf.constant(_image(8, 8))
  view = config_lib.base_config().augment.view_b
  a = augment.augment_cropped(image, [1, 2], view).numpy()
  b = augment.augment_cropped(image, [1, 2], view).numpy()
  np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="blur_prob"):
    augment.augment_cropped(image, [1, 2], _view(blur_prob=1.5))
  with pytest.raises(ValueError, match="crop_area"):
    crop.crop_window(8, 8, [0, 0], area=(0.5, 1.5), aspect=(1.0, 1.0))

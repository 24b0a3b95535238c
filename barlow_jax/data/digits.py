"""Offline datasets built from scikit-learn's real 8x8 digits (shipped in scikit-learn).

NumPy only: importing this module loads no TensorFlow.

- `digits`: the 1,797 digits, upsampled and replicated to RGB. A quick sanity set, but too easy to
  show what self-supervision buys (raw pixels already reach ~97% with a linear classifier).
- `cluttered_digits`: the embedded default. Each digit is rendered several times on a 20x20 RGB
  canvas with a random flat background colour, a random foreground colour, a random scale, aspect
  and position, and pixel noise. Colour and position are nuisances; the class is the digit. Raw
  pixels are a poor linear feature here, so what the augmentations teach the network shows.

Both split the 1,797 digits the same way (stratified, fixed seed): 1,437 train / 360 test, so no
digit drawn for training is ever rendered into the test set.
"""

import numpy as np

NUM_TRAIN_DIGITS = 1437
NUM_TEST_DIGITS = 360
_SPLIT_SEED = 0  # The train/test split of the 1,797 digits never changes with the render seed.
CLUTTERED_SIZE = 20
CLUTTERED_RENDERS = {"train": 5, "test": 3}
DIGITS_SIZE = 16

# ITU-R 601-2 luma, the same weights as the grayscale augmentation.
_LUMA = np.array([0.299, 0.587, 0.114])


def load_digits() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's 1,797 digits: float64 [N, 8, 8] in [0, 1] and int32 labels [N]."""
  from sklearn import datasets as sklearn_datasets  # Reads a file shipped inside scikit-learn.

  bunch = sklearn_datasets.load_digits()
  return bunch.images.astype(np.float64) / 16.0, bunch.target.astype(np.int32)


def stratified_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Indices (train, test) with NUM_TEST_DIGITS test digits, class proportions kept."""
  rng = np.random.RandomState(_SPLIT_SEED)
  classes, counts = np.unique(labels, return_counts=True)
  exact = counts * NUM_TEST_DIGITS / len(labels)
  per_class = np.floor(exact).astype(int)
  # Largest remainders get the leftover test slots, so the test set has exactly 360 digits.
  leftover = NUM_TEST_DIGITS - per_class.sum()
  per_class[np.argsort(-(exact - per_class), kind="stable")[:leftover]] += 1
  train, test = [], []
  for c, n_test in zip(classes, per_class):
    idx = rng.permutation(np.flatnonzero(labels == c))
    test.append(idx[:n_test])
    train.append(idx[n_test:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def bilinear_place(
  glyphs: np.ndarray,
  top: np.ndarray,
  left: np.ndarray,
  height: np.ndarray,
  width: np.ndarray,
  size: int,
) -> np.ndarray:
  """Renders each [8, 8] glyph into a [size, size] canvas at a sub-pixel box, bilinearly.

  Args:
    glyphs: [N, h, w] intensities in [0, 1].
    top, left, height, width: [N] box of each glyph on the canvas, in pixels (floats).
    size: canvas side.

  Returns:
    [N, size, size] coverage in [0, 1]; zero outside the box.
  """
  n, gh, gw = glyphs.shape
  centres = np.arange(size) + 0.5
  # Source coordinate (in glyph pixels, centre-aligned) of every canvas pixel centre.
  src_y = (centres[None, :] - top[:, None]) / height[:, None] * gh - 0.5  # [N, size]
  src_x = (centres[None, :] - left[:, None]) / width[:, None] * gw - 0.5
  padded = np.pad(glyphs, ((0, 0), (1, 1), (1, 1)))  # Zero border: the glyph fades to background.

  def taps(src, extent):
    lo = np.floor(src)
    frac = src - lo
    lo = lo.astype(int) + 1  # +1 for the padding.
    lo_c = np.clip(lo, 0, extent + 1)
    hi_c = np.clip(lo + 1, 0, extent + 1)
    return lo_c, hi_c, frac

  y0, y1, fy = taps(src_y, gh)
  x0, x1, fx = taps(src_x, gw)
  rows = np.arange(n)[:, None, None]

  def gather(yi, xi):
    return padded[rows, yi[:, :, None], xi[:, None, :]]

  fy, fx = fy[:, :, None], fx[:, None, :]
  out = (
    gather(y0, x0) * (1 - fy) * (1 - fx)
    + gather(y0, x1) * (1 - fy) * fx
    + gather(y1, x0) * fy * (1 - fx)
    + gather(y1, x1) * fy * fx
  )
  return np.clip(out, 0.0, 1.0)


def colours(rng: np.random.RandomState, n: int) -> tuple[np.ndarray, np.ndarray]:
  """Background and foreground colours [N, 3]: >= 0.6 apart in RGB, >= 0.3 apart in luma."""
  background = rng.uniform(size=(n, 3))
  foreground = np.empty_like(background)
  todo = np.arange(n)
  while todo.size:
    # Rejection sampling, vectorised: 32 candidates per pending row, keep the first valid one.
    cand = rng.uniform(size=(todo.size, 32, 3))
    bg = background[todo][:, None, :]
    ok = (np.linalg.norm(cand - bg, axis=-1) >= 0.6) & (np.abs((cand - bg) @ _LUMA) >= 0.3)
    found = ok.any(axis=1)
    first = ok.argmax(axis=1)
    foreground[todo[found]] = cand[found, first[found]]
    todo = todo[~found]
  return background, foreground


def _render(glyphs: np.ndarray, rng: np.random.RandomState, size: int) -> np.ndarray:
  n = glyphs.shape[0]
  height = rng.uniform(10.0, 17.0, size=n)
  aspect = rng.uniform(0.8, 1.25, size=n)  # width / height
  width = np.minimum(height * aspect, size)
  top = rng.uniform(0.0, size - height)
  left = rng.uniform(0.0, size - width)
  coverage = bilinear_place(glyphs, top, left, height, width, size)[..., None]
  background, foreground = colours(rng, n)
  images = background[:, None, None, :] * (1 - coverage) + foreground[:, None, None, :] * coverage
  images = images + rng.normal(scale=0.03, size=images.shape)
  return np.clip(images, 0.0, 1.0).astype(np.float32)


def cluttered_digits(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """The cluttered-digits dataset, deterministic from `seed` (about a second to generate).

  Each of the 1,437 train digits is rendered 5 times and each of the 360 test digits 3 times on a
  20x20 RGB canvas: flat random background colour; the digit scaled to 10-17 px high with aspect
  (width / height) 0.8-1.25, placed at a random sub-pixel position (bilinear); a random
  foreground colour at least 0.6 from the background in RGB distance and 0.3 in luma (so the
  polarity varies); Gaussian noise sigma 0.03; values clipped to [0, 1].

  Args:
    seed: seed of the rendering (colours, sizes, positions, noise). The train/test split of the
      underlying digits is fixed and does not depend on it.

  Returns:
    {"train": (images float32 [7185, 20, 20, 3] in [0, 1], labels int32 [7185]),
     "test": (images float32 [1080, 20, 20, 3], labels int32 [1080])}.
  """
  glyphs, labels = load_digits()
  train_idx, test_idx = stratified_split(labels)
  out = {}
  for split, idx in (("train", train_idx), ("test", test_idx)):
    repeats = CLUTTERED_RENDERS[split]
    rng = np.random.RandomState([seed, 1 if split == "train" else 2])
    rep = np.repeat(idx, repeats)
    out[split] = (_render(glyphs[rep], rng, CLUTTERED_SIZE), labels[rep].astype(np.int32))
  return out


def digits(
  seed: int = 0, image_size: int = DIGITS_SIZE
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """The plain digits, upsampled bilinearly to `image_size` and replicated to RGB.

  White digit on black, values in [0, 1], the same fixed 1,437 / 360 split as `cluttered_digits`.
  `seed` is accepted for a uniform signature; nothing here is random.

  Returns:
    {"train": (float32 [1437, S, S, 3], int32 [1437]),
     "test": (float32 [360, S, S, 3], int32 [360])}.
  """
  del seed
  if image_size < 8:
    raise ValueError(f"digits: image_size must be >= 8 (the digits are 8x8), got {image_size}.")
  glyphs, labels = load_digits()
  train_idx, test_idx = stratified_split(labels)
  out = {}
  for split, idx in (("train", train_idx), ("test", test_idx)):
    n = len(idx)
    full = np.zeros(n)
    box = np.full(n, float(image_size))
    images = bilinear_place(glyphs[idx], full, full, box, box, image_size)
    out[split] = (np.repeat(images[..., None], 3, axis=-1).astype(np.float32), labels[idx])
  return out


# Dataset names served from memory by the input pipeline, and their generators.
IN_MEMORY = {"cluttered_digits": cluttered_digits, "digits": digits}

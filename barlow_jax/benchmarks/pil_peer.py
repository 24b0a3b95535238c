"""The reference's per-view transform restated with PIL + NumPy: the input benchmark's peer.

The reference (Barlow Twins, reference main.py `Transform`) augments PIL images with torchvision
transforms; this module restates their semantics without importing torchvision, so that the
benchmark compares against what a PyTorch user's data loader worker does per image:

    image = Image.open(BytesIO(jpeg)).convert("RGB")     # once per example (ImageFolder loader)
    per view:
      RandomResizedCrop(224, interpolation=BICUBIC)      # 10 tries, then the centre fallback
      RandomHorizontalFlip(p=0.5)
      RandomApply([ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8)   # the four ops in random order
      RandomGrayscale(p=0.2)
      GaussianBlur(p)        # ImageFilter.GaussianBlur(radius=sigma), sigma ~ U(0.1, 2.0)
      Solarization(p)        # ImageOps.solarize(img), threshold 128
      ToTensor(), Normalize(mean, std)   # float32 [3, 224, 224]

View A: blur p 1.0, solarize p 0.0; view B: blur p 0.1, solarize p 0.2 (BYOL's parameters).
The torchvision functional ops on PIL images it restates: `adjust_brightness` /
`adjust_contrast` / `adjust_saturation` are `ImageEnhance.Brightness` / `Contrast` / `Color`;
`adjust_hue` shifts the H channel of `convert("HSV")` in uint8 arithmetic (wrapping).
"""

import io
import math
import random

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
VIEWS = ({"blur": 1.0, "solarize": 0.0}, {"blur": 0.1, "solarize": 0.2})


def crop_box(rng: random.Random, width: int, height: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """torchvision `RandomResizedCrop.get_params`: (top, left, height, width)."""
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return rng.randint(0, height - h), rng.randint(0, width - w), h, w
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def _adjust_hue(image: Image.Image, delta: float) -> Image.Image:
  h, s, v = image.convert("HSV").split()
  hue = np.asarray(h, np.uint8).copy()
  with np.errstate(over="ignore"):
    hue += np.uint8(int(delta * 255) % 256)
  return Image.merge("HSV", (Image.fromarray(hue, "L"), s, v)).convert("RGB")


def color_jitter(image, rng: random.Random, b=0.4, c=0.4, s=0.2, h=0.1):
  """torchvision `ColorJitter(b, c, s, h)` on a PIL image: random factors, random order."""
  factors = (rng.uniform(1 - b, 1 + b), rng.uniform(1 - c, 1 + c), rng.uniform(1 - s, 1 + s))
  hue = rng.uniform(-h, h)
  enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
  for i in rng.sample(range(4), 4):
    image = _adjust_hue(image, hue) if i == 3 else enhancers[i](image).enhance(factors[i])
  return image


def view(image: Image.Image, rng: random.Random, blur_p: float, solarize_p: float, size=224):
  """One view of a decoded RGB image: float32 [3, size, size], normalised (ToTensor layout)."""
  top, left, h, w = crop_box(rng, *image.size)
  out = image.crop((left, top, left + w, top + h)).resize((size, size), Image.BICUBIC)
  if rng.random() < 0.5:
    out = out.transpose(Image.FLIP_LEFT_RIGHT)
  if rng.random() < 0.8:
    out = color_jitter(out, rng)
  if rng.random() < 0.2:
    out = out.convert("L").convert("RGB")
  if rng.random() < blur_p:
    out = out.filter(ImageFilter.GaussianBlur(radius=rng.random() * 1.9 + 0.1))
  if rng.random() < solarize_p:
    out = ImageOps.solarize(out)
  pixels = np.asarray(out, np.float32) * np.float32(1 / 255)
  return ((pixels - MEAN) / STD).transpose(2, 0, 1)


def two_views(jpeg: bytes, rng: random.Random, size: int = 224) -> tuple[np.ndarray, np.ndarray]:
  """The reference's `Transform` on one encoded image: decoded once, two views."""
  image = Image.open(io.BytesIO(jpeg)).convert("RGB")
  return tuple(view(image, rng, v["blur"], v["solarize"], size) for v in VIEWS)


def batches(encoded: list[bytes], batch: int, seed: int = 0, size: int = 224):
  """An endless iterator of (view_a [B, 3, S, S], view_b) batches, like a DataLoader worker."""
  rng = random.Random(seed)
  i = 0
  while True:
    pairs = []
    for _ in range(batch):
      pairs.append(two_views(encoded[i % len(encoded)], rng, size))
      i += 1
    yield np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

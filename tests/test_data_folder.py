"""barlow_jax.data.folder and pil_formats: image folders as the reference's ImageFolder reads
them: file names that are not UTF-8 and the formats Pillow decodes (TIFF, PPM, PGM, PBM, 1- and
8-bit BMP, ...), in pretraining and in evaluation, against PIL's convert("RGB") pixels."""

import io
import os

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
from PIL import Image  # noqa: E402

from barlow_jax import config as config_lib  # noqa: E402
from barlow_jax.data import evaluation, folder, pil_formats, pretrain  # noqa: E402

SIZE = 12


def _folder_config(root, batch: int):
  """Identity views (full square crop at the image's own size, no photometric op), raw pixels."""
  config = config_lib.base_config()
  config.dataset.update(name="folder", folder=os.fsdecode(root), image_size=SIZE, eval_resize=SIZE)
  config.batch_size = batch
  for view in (config.augment.view_a, config.augment.view_b):
    view.update(crop_area=(1.0, 1.0), crop_aspect=(1.0, 1.0), crop_method="bilinear")
    for key in ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob"):
      view[key] = 0.0
    view.channel_permute_prob = 0.0
  config.augment.update(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
  return config


def _pixels(config, n):
  """(every pretraining view, evaluation images in file order) as float64 levels."""
  batch = next(pretrain.create_pretrain_iterator(config, process_index=0, process_count=1))
  views = np.concatenate([batch["view_a"], batch["view_b"]]).astype(np.float64)
  (evaluated,) = evaluation.create_eval_iterator(
    config, "train", batch_size=n, process_index=0, process_count=1
  )
  assert evaluated["mask"].all()
  return views, evaluated["image"].astype(np.float64) * 255


def _pil(data: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float64)


def test_file_names_that_are_not_utf8_are_read(tmp_path):
  # Latin-1 names on disk (b"caf\xe9.png" is not UTF-8), a class directory among them.
  root = os.fsencode(tmp_path / "images")
  names = [(b"cat", b"caf\xe9.png"), (b"cat", b"ok.png"), (b"d\xf6g", b"na\xefve.png")]
  names.append((b"d\xf6g", b"x.png"))
  expected = []
  for i, (cls, name) in enumerate(names):
    os.makedirs(os.path.join(root, cls), exist_ok=True)
    image = np.full((SIZE, SIZE, 3), (40 * i, 200 - 30 * i, 7 * i), np.uint8)
    Image.fromarray(image).save(os.path.join(root, cls, name), "PNG")
    expected.append(image.astype(np.float64))
  paths, labels = folder.list_folder(os.fsdecode(root))
  assert [os.fsencode(p) for p in paths] == [os.path.join(root, c, n) for c, n in names]
  assert labels.tolist() == [0, 0, 1, 1]
  views, evaluated = _pixels(_folder_config(root, 4), 4)
  np.testing.assert_allclose(evaluated, np.stack(expected), atol=1e-3)
  # Every view is one of the images, and every image is seen.
  seen = {int(np.argmin([np.abs(v - e).max() for e in expected])) for v in views}
  assert seen == {0, 1, 2, 3}
  assert all(min(np.abs(v - e).max() for e in expected) <= 1e-3 for v in views)


def _encoded(rng) -> dict[str, bytes]:
  """One square image per format (torchvision ImageFolder's extensions and what Pillow adds),
  each with its own pixels."""
  files = {
    "tiff.tif": (lambda rgb, gray: Image.fromarray(rgb), "TIFF", {}),
    "tiff_lzw.tiff": (lambda rgb, gray: Image.fromarray(rgb), "TIFF", {"compression": "tiff_lzw"}),
    "tiff_gray16.tif": (lambda rgb, gray: Image.fromarray(gray.astype(np.uint16)), "TIFF", {}),
    "ppm.ppm": (lambda rgb, gray: Image.fromarray(rgb), "PPM", {}),
    "pgm.pgm": (lambda rgb, gray: Image.fromarray(gray), "PPM", {}),
    "pbm.pbm": (lambda rgb, gray: Image.fromarray(gray > 127), "PPM", {}),
    "bmp_1bit.bmp": (lambda rgb, gray: Image.fromarray(gray > 127).convert("1"), "BMP", {}),
    "bmp_8bit_palette.bmp": (lambda rgb, gray: Image.fromarray(rgb).convert("P"), "BMP", {}),
    "bmp_8bit_gray.bmp": (lambda rgb, gray: Image.fromarray(gray), "BMP", {}),
    "bmp_24bit.bmp": (lambda rgb, gray: Image.fromarray(rgb), "BMP", {}),
    "png.png": (lambda rgb, gray: Image.fromarray(rgb), "PNG", {}),
    "gif.gif": (lambda rgb, gray: Image.fromarray(rgb).convert("P"), "GIF", {}),
    "webp.webp": (lambda rgb, gray: Image.fromarray(rgb), "WEBP", {"lossless": True}),
    "tga.tga": (lambda rgb, gray: Image.fromarray(rgb), "TGA", {}),
  }
  out = {}
  for name, (make, fmt, kwargs) in files.items():
    rgb = rng.randint(0, 256, (SIZE, SIZE, 3), np.uint8)
    gray = rng.randint(0, 256, (SIZE, SIZE), np.uint8)
    buf = io.BytesIO()
    make(rgb, gray).save(buf, fmt, **kwargs)
    out[name] = buf.getvalue()
  return out


PIL_ONLY = {"tiff", "tiff_lzw", "tiff_gray16", "ppm", "pgm", "pbm", "bmp_1bit"}
PIL_ONLY |= {"bmp_8bit_palette", "bmp_8bit_gray", "tga"}


def test_pillow_formats_decode_to_pils_pixels_in_pretraining_and_evaluation(tmp_path):
  files = _encoded(np.random.RandomState(0))
  for name, data in files.items():
    (tmp_path / name).write_bytes(data)
    # TensorFlow keeps the formats it reads as Pillow does; Pillow takes the rest.
    assert bool(pil_formats.tensorflow_decodes(tf.constant(data))) == (
      name.split(".")[0] not in PIL_ONLY
    ), name
  (tmp_path / "notes.txt").write_text("not an image")
  expected = [_pil(files[name]) for name in sorted(files)]  # The folder's (sorted) order.
  assert len({e.tobytes() for e in expected}) == len(files)
  config = _folder_config(tmp_path, len(files))
  paths, _ = folder.list_folder(str(tmp_path))
  assert sorted(os.path.basename(p) for p in paths) == sorted(files)  # notes.txt skipped.
  views, evaluated = _pixels(config, len(files))
  for i, name in enumerate(sorted(files)):
    np.testing.assert_allclose(evaluated[i], expected[i], atol=1e-3, err_msg=name)
  for view in views:
    assert min(np.abs(view - e).max() for e in expected) == 0
  seen = {int(np.argmin([np.abs(v - e).max() for e in expected])) for v in views}
  assert len(seen) >= len(files) // 2  # Both views of a batch: most files appear.

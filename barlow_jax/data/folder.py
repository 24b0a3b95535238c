"""The "folder" source kind: images under `config.dataset.folder`, one sub-directory per class.

A split `s` reads `folder/s/` when that directory exists, else the folder itself for the
training split. Inside, sub-directories are classes (`root/class/x.jpg`, labels = sorted class
names) or, with no sub-directories, the images are unlabelled. Every file is decoded once when
the folder is first listed (in parallel); files that do not decode (corrupt, not an image) are
skipped with a warning that gives their count and first paths, so an epoch never fails halfway.
Local directories and buckets (gs://...) alike: listing through etils.epath, reading through
tf.io. Paths enter TensorFlow as the bytes the file system names them by (`tf_paths`), so a name
that is not UTF-8 (a Latin-1 `caf\xe9.jpg` on disk) is read like any other. Files decode through
TensorFlow or, for the formats it does not read (TIFF, PPM, PGM, 1-bit BMP, ...), Pillow
(`barlow_jax.data.pil_formats`).
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf
from absl import logging
from etils import epath

from barlow_jax.data.batching import shard_bounds
from barlow_jax.data.crop import decode_image, decode_whole
from barlow_jax.data.stream import IndexedSource, Source, Stream

_BAD_PATHS_SHOWN = 10


@dataclasses.dataclass
class FileSource(IndexedSource):
  """Image files: paths [N] str (`list_folder`'s) and int32 labels [N] (None when unlabelled)."""

  paths: np.ndarray
  labels: np.ndarray | None
  is_bytes = True

  @property
  def num_examples(self) -> int:
    return len(self.paths)

  @property
  def has_labels(self) -> bool:
    return self.labels is not None

  def _labels(self) -> np.ndarray:
    return self.labels if self.has_labels else np.zeros(self.num_examples, np.int32)

  def gather_tensors(self):
    return tf.constant(tf_paths(self.paths)), tf.constant(self._labels())

  def eval_stream(self, *, process_index, process_count):
    lo, hi = shard_bounds(self.num_examples, process_index, process_count)
    ds = tf.data.Dataset.from_tensor_slices((tf_paths(self.paths[lo:hi]), self._labels()[lo:hi]))
    return Stream(ds, lambda path, label: (decode_image(tf.io.read_file(path)), label))


def tf_paths(paths) -> np.ndarray:
  """Paths -> object [N] of bytes, the names as the file system holds them, for tf.io.

  Python gives an undecodable local name as a str with surrogate escapes (`os.fsdecode`); a
  TensorFlow string built from that str would be its UTF-8 encoding, which fails. `os.fsencode`
  restores the original bytes (a bucket's names are UTF-8 already and stay so).
  """
  return np.array([os.fsencode(str(p)) for p in paths], dtype=object).reshape(-1)


_FOLDER_CACHE: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}


def _is_hidden(name: str) -> bool:
  return name.startswith(".")


def _verify_images(paths: list[str]) -> np.ndarray:
  """Boolean [N]: which files decode as images (decoded once, in parallel)."""

  def check(i, path):
    image = decode_whole(tf.io.read_file(path))  # Training's own decoders.
    # Returning something computed from the pixels keeps tf.data from pruning the decode.
    return i, tf.reduce_prod(tf.shape(image))

  ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), tf_paths(paths)))
  ds = ds.map(check, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
  ds = ds.ignore_errors()
  ok = np.zeros(len(paths), bool)
  for i, num_values in ds.as_numpy_iterator():
    ok[i] = num_values > 0
  return ok


def _folder_files(root: epath.Path, directory: str) -> tuple[list[str], list[int], bool]:
  """Every non-hidden file under `root`: paths, labels (sorted class sub-directories), labelled."""
  # Object stores list sub-directories as "name/".
  entries = sorted(n for n in (p.name.rstrip("/") for p in root.iterdir()) if not _is_hidden(n))
  classes = [e for e in entries if (root / e).is_dir()]
  paths, labels = [], []
  if classes:
    for label, name in enumerate(classes):
      for top, dirs, files in (root / name).walk():
        dirs[:] = sorted(d for d in dirs if not _is_hidden(d.rstrip("/")))
        for f in sorted(files):
          if not _is_hidden(f):
            paths.append(os.fspath(top / f))
            labels.append(label)
    loose = [e for e in entries if e not in classes]
    if loose:
      logging.warning(
        "folder %s has class sub-directories; ignoring %d loose files at its top level (%s...)",
        directory,
        len(loose),
        loose[:3],
      )
  else:
    paths = [os.fspath(root / e) for e in entries]
  return paths, labels, bool(classes)


def list_folder(directory: str) -> tuple[np.ndarray, np.ndarray | None]:
  """Paths [N] str (and int32 labels [N], or None when unlabelled) of the good images.

  A local name that is not UTF-8 is a str with surrogate escapes, as `os.listdir` gives it
  (`os.fsencode` turns it back into the name on disk; `tf_paths` does so for tf.io).

  `directory` is local or a bucket (gs://...): listing goes through etils.epath, reading through
  tf.io (both speak gs://).
  """
  if "://" not in directory:
    directory = os.path.abspath(os.path.expanduser(directory))
  root = epath.Path(directory)
  if directory in _FOLDER_CACHE:
    return _FOLDER_CACHE[directory]
  if not root.is_dir():
    raise ValueError(f"config.dataset.folder: {directory!r} is not a directory.")
  paths, labels, labelled = _folder_files(root, directory)
  if not paths:
    raise ValueError(
      f"config.dataset.folder: no files under {directory!r}. Expected root/class/image.jpg "
      "(labelled) or root/image.jpg (unlabelled)."
    )
  ok = _verify_images(paths)
  if not ok.all():
    bad = [p for p, good in zip(paths, ok) if not good]
    logging.warning(
      "folder %s: skipping %d of %d files that do not decode as images; first: %s",
      directory,
      len(bad),
      len(paths),
      bad[:_BAD_PATHS_SHOWN],
    )
  if not ok.any():
    raise ValueError(
      f"config.dataset.folder: none of the {len(paths)} files under "
      f"{directory!r} decodes as an image."
    )
  result = (
    np.array(paths)[ok],
    np.array(labels, np.int32)[ok] if labelled else None,
  )
  _FOLDER_CACHE[directory] = result
  return result


def folder_split_directory(config, split: str) -> str:
  """The directory a folder split reads: `folder/split/` if it exists, else (training split
  only) the folder itself.

  Raises:
    ValueError: when `config.dataset.folder` is unset, or a split other than the training split
      has no directory of its own.
  """
  root = config.dataset.folder
  if not root:
    raise ValueError("config.dataset.folder must be set when config.dataset.name == 'folder'.")
  directory = os.fspath(epath.Path(root) / split)
  if not epath.Path(directory).is_dir():
    if split != config.dataset.train_split:
      raise ValueError(
        f"config.dataset.folder: split {split!r} needs a directory {directory!r}; only the "
        f"training split ({config.dataset.train_split!r}) may use the folder root."
      )
    directory = root
  return directory


def open_folder(config, split: str) -> Source:
  """Split `split` of the folder dataset (`folder_split_directory`), listed once per directory."""
  paths, labels = list_folder(folder_split_directory(config, split))
  return FileSource(paths, labels)

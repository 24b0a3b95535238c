"""What every test shares: 8 emulated CPU devices, one compilation cache, one tiny finished run.

- Every test sees 8 emulated CPU devices and TensorFlow never sees an accelerator. This must
  run before anything imports jax, so it sets the environment at import time.
- One persistent compilation cache per suite, in a temporary directory: the pytest-xdist
  workers and every subprocess a test starts (`python -m barlow_jax.main`, the launcher's
  children, the notebook's kernel) inherit `JAX_COMPILATION_CACHE_DIR`, so a program compiled by
  one of them is read from disk by the others (about ten invocations in six files train the
  tiny config of tests/configs_tiny.py; without the cache each compiled its programs anew).
  The cache key holds the program, the devices, the compile options and the XLA flags (the
  device count flag aside, the device assignment covers it), so a hit is the executable a fresh
  compile would give on this machine. A `JAX_COMPILATION_CACHE_DIR` set by the caller is kept
  (an empty value turns the cache off).
- `tiny_run`: one finished tiny pretraining run (tests/shared_run.py), made once per suite.
- Under pytest-xdist, each test file runs whole on one worker (`--dist loadfile`), the slowest
  files first (`SLOWEST_FILES_FIRST`).
"""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["CUDA_VISIBLE_DEVICES"] = ""  # Hides GPUs from TensorFlow (and jax's CUDA plugin).

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  # Made by the process that starts the suite (pytest-xdist's controller, or the only process);
  # the workers it then starts inherit the variable and share the directory.
  _CACHE_DIR = tempfile.mkdtemp(prefix="barlow_jax_tests_jax_cache_")
  atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR
# Every program is cached, however small or quick to compile (jax's defaults skip those under 1 s).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import pytest  # noqa: E402

NUM_DEVICES = 8


# The test files that take longest on the 2-core machine, slowest first (docs/benchmarks.md, "The
# test suite's shared parts"): the order in which the workers start them
# (`pytest_collection_modifyitems`); every other file follows, in collection order. The suite's
# tiny run (`tiny_run`) is made by the first of its users (test_checkpointing, test_gcs,
# test_benchmark_step), early here and apart from the others so that no worker waits on its lock.
SLOWEST_FILES_FIRST = (
  "test_train.py",
  "test_evaluate.py",
  "test_checkpointing.py",
  "test_parallel.py",
  "test_finish.py",
  "test_benchmark_compile.py",
  "test_scale_out.py",
  "test_main.py",
  "test_train_setup.py",
  "test_gcs.py",
  "test_spike_guard.py",
  "test_convert.py",
  "test_models.py",
  "test_profile.py",
  "test_colab_demo.py",
  "test_device_augment.py",
  "test_benchmark_input.py",
  "test_data_pretrain.py",
  "test_cli.py",
  "test_benchmark_step.py",
)


def pytest_configure(config):
  # With -n N, pytest-xdist sends each worker tests one by one (--dist load, its default), so a
  # file's module fixtures (its tiny runs) were made again on every worker that got one of its
  # tests. Here each test file runs whole on one worker (--dist loadfile); another --dist given
  # on the command line is kept. Set here, not in pyproject's addopts: without pytest-xdist
  # there is no --dist option.
  if getattr(config.option, "dist", "no") == "load":
    config.option.dist = "loadfile"
  # pytest-xdist hands out whole files in the order of the collection, which by default it first
  # sorts by the number of tests in a file: the slow files, a few long tests each, came last, and
  # one worker ran the last of them while the other had nothing left. Collection order instead
  # (slowest first, `pytest_collection_modifyitems`): the short files fill the end.
  if getattr(config.option, "dist", "no") in ("loadfile", "loadscope"):
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
  """Runs the files of `SLOWEST_FILES_FIRST` first, in that order; each file's tests keep theirs."""
  rank = {name: i for i, name in enumerate(SLOWEST_FILES_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def devices():
  import jax

  devs = jax.devices()
  assert len(devs) == NUM_DEVICES, f"conftest expected {NUM_DEVICES} CPU devices, got {devs}"
  return devs


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
  """The suite's finished tiny run (`shared_run.TinyRun`): read it, copy it to change it.

  Under pytest-xdist each worker has a session of its own; their base temporary directories
  share a parent made for this suite (pytest-xdist's documented pattern), where the first
  worker to ask trains the run under a file lock and the others wait for it and read it. A run
  without xdist keeps it in its own base directory (the parent is shared by all of the user's
  pytest sessions).
  """
  import filelock
  import shared_run

  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent
  home = root / "tiny_run"
  done = home / "done"
  with filelock.FileLock(str(root / "tiny_run.lock")):
    if not done.exists():
      shutil.rmtree(home, ignore_errors=True)  # What a worker that failed halfway left.
      shared_run.make(str(home / "wd"))
      done.touch()
  return shared_run.TinyRun(shared_run.config(), str(home / "wd"))

"""barlow_jax.tools.install_deps: Colab's TensorFlow and jax stay; and the notebook installs so.

The slow test builds a fresh virtual environment holding the full `tensorflow` distribution and
a jax (standing in for Colab's), runs experiments/colab_demo.ipynb there with its own install
cell (`INSTALL=auto`) on the offline digits, and checks that neither was replaced nor joined by
`tensorflow-cpu`.
"""

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap

import pytest

from barlow_jax.tools import install_deps

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DECLARED = [
  "jax<0.11,>=0.7",
  "flax<0.13,>=0.11",
  "tensorflow-cpu<2.22,>=2.17",
  "tensorboard<2.22,>=2.17",
  'pytest>=8; extra == "test"',
]


def test_colab_keeps_its_tensorflow_and_jax():
  colab = {
    "tensorflow": "2.19.0",
    "jax": "0.7.2",
    "jaxlib": "0.7.2",
    "jax-cuda12-plugin": "0.7.2",
    "jax_cuda12_pjrt": "0.7.2",
    "tensorboard": "2.19.0",
    "tensorflow-datasets": "4.9.2",  # Older than required: may be upgraded.
    "numpy": "2.0.2",
  }
  requirements, pins = install_deps.plan(DECLARED, colab)
  assert requirements == [
    "jax<0.11,>=0.7",
    "flax<0.13,>=0.11",
    "tensorflow<2.22,>=2.17",
    "tensorboard<2.22,>=2.17",
  ]
  assert pins == [
    "jax==0.7.2",
    "jax-cuda12-pjrt==0.7.2",
    "jax-cuda12-plugin==0.7.2",
    "jaxlib==0.7.2",
    "tensorflow==2.19.0",
  ]


def test_without_tensorflow_the_cpu_wheel_is_asked_for():
  requirements, pins = install_deps.plan(DECLARED, {"numpy": "2.0.2", "jaxtyping": "0.3"})
  assert "tensorflow-cpu<2.22,>=2.17" in requirements and pins == []


@pytest.mark.slow
def test_the_notebook_installs_around_a_preinstalled_tensorflow_and_jax(tmp_path):
  tf_version = importlib.metadata.version("tensorflow-cpu")
  jax_version = importlib.metadata.version("jax")
  venv = tmp_path / "colab"
  subprocess.check_call([sys.executable, "-m", "venv", str(venv)])
  python = str(venv / "bin" / "python")

  def pip(*args):
    subprocess.check_call([python, "-m", "pip", "install", "-q", *args])

  # The runtime: TensorFlow (the full distribution) and jax, plus what Colab's Jupyter has.
  pip(f"tensorflow=={tf_version}", f"jax[cpu]=={jax_version}")
  pip("nbclient", "nbformat", "ipykernel", "matplotlib")
  before = _freeze(python)
  assert "tensorflow-cpu" not in before
  # What the cell must not do: a plain install of the package would add tensorflow-cpu.
  naive = subprocess.run(
    [python, "-m", "pip", "install", "--dry-run", "-e", _ROOT], capture_output=True, text=True
  )
  assert "tensorflow-cpu" in naive.stdout, naive.stdout[-2000:] + naive.stderr[-2000:]

  workdir = tmp_path / "demo"
  env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "XLA_"))}
  env.update(
    PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}",
    BT_DEMO_DATASET="digits",
    BT_DEMO_STEPS="4",
    BT_DEMO_BATCH_SIZE="32",
    BT_DEMO_WIDTH="0.125",
    BT_DEMO_PROJECTOR="32-32-32",
    BT_DEMO_KNN_EVERY="0",
    BT_DEMO_PROBE_EPOCHS="2",
    BT_DEMO_BASELINES="false",
    BT_DEMO_WORKDIR=str(workdir),
    BT_DEMO_INSTALL="auto",
  )
  driver = textwrap.dedent(
    """
    import sys, nbclient, nbformat
    nb = nbformat.read(sys.argv[1], as_version=4)
    nbclient.NotebookClient(
      nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": sys.argv[2]}}
    ).execute()
    nbformat.write(nb, sys.argv[3])
    """
  )
  notebook = os.path.join(_ROOT, "experiments", "colab_demo.ipynb")
  executed = tmp_path / "executed.ipynb"
  subprocess.check_call(
    [python, "-c", driver, notebook, os.path.dirname(notebook), str(executed)], env=env
  )
  after = _freeze(python)
  assert "tensorflow-cpu" not in after, "a second TensorFlow distribution was installed"
  for name in ("tensorflow", "jax", "jaxlib"):
    assert after[name] == before[name], f"{name} {before[name]} was replaced by {after[name]}"
  assert "barlow-jax" in after and "flax" in after
  text = "\n".join(
    "".join(out.get("text", ""))
    for cell in json.loads(executed.read_text())["cells"]
    if cell["cell_type"] == "code"
    for out in cell.get("outputs", [])
  )
  assert "4 steps in" in text and "Barlow Twins: linear top-1" in text, text[-3000:]
  assert (workdir / "results.json").exists()


def _freeze(python: str) -> dict[str, str]:
  out = subprocess.check_output([python, "-m", "pip", "list", "--format=json"], text=True)
  return {install_deps.distribution_name(d["name"]): d["version"] for d in json.loads(out)}

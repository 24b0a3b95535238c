"""experiments/colab_demo.ipynb runs end to end (headless, CPU, digits, a tiny network)."""

import json
import os
import time

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NOTEBOOK = os.path.join(_ROOT, "experiments", "colab_demo.ipynb")


def _code_cells(nb) -> list[dict]:
  return [c for c in nb["cells"] if c["cell_type"] == "code"]


def test_the_first_cell_installs_and_a_parameters_cell_follows():
  code = _code_cells(json.load(open(_NOTEBOOK)))
  install = "".join(code[0]["source"])
  assert "barlow_jax.tools.install_deps" in install and "--no-deps" in install
  assert "REPO_URL" in install and "@param" in install  # A Colab form field.
  tagged = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
  assert len(tagged) == 1 and "BT_DEMO_" in "".join(tagged[0]["source"])


def test_the_committed_notebook_has_the_outputs_of_a_real_run():
  nb = json.load(open(_NOTEBOOK))
  code = _code_cells(nb)
  counts = [c.get("execution_count") for c in code]
  assert all(isinstance(n, int) for n in counts) and counts == sorted(counts), counts
  assert not any(o.get("output_type") == "error" for c in code for o in c.get("outputs", []))
  pngs = sum("image/png" in o.get("data", {}) for c in code for o in c.get("outputs", []))
  assert pngs >= 3, "view pairs, loss curve and heatmaps should each show a figure"
  text = _text(nb)
  assert "compute dtype float32" in text and "Barlow Twins: linear top-1" in text


def test_the_notebook_runs_headless_on_digits(tmp_path, monkeypatch):
  nbclient = pytest.importorskip("nbclient")
  import nbformat

  workdir = tmp_path / "demo"
  env = {
    "DATASET": "digits",
    "STEPS": "6",
    "BATCH_SIZE": "32",
    "WIDTH": "0.125",
    "PROJECTOR": "32-32-32",
    "KNN_EVERY": "0",
    "PROBE_EPOCHS": "2",
    "BASELINES": "false",
    "WORKDIR": str(workdir),
    "INSTALL": "skip",  # The test's interpreter already imports barlow_jax from the repo.
  }
  # Reset the committed outputs so that nothing below can come from them.
  nb = nbformat.read(_NOTEBOOK, as_version=4)
  for cell in nb.cells:
    if cell.cell_type == "code":
      cell.outputs, cell.execution_count = [], None
  # The data of the view-pair figure against the views themselves: the digits config augments
  # on the host, so the network gets uint8 / 255 (normalised, which the figure undoes).
  nb.cells.append(nbformat.v4.new_code_cell(_VIEW_CHECK))
  for name, value in env.items():
    monkeypatch.setenv(f"BT_DEMO_{name}", value)
  # The kernel is a fresh interpreter: it must find the repository's packages.
  monkeypatch.setenv("PYTHONPATH", _ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  # One CPU device in the kernel (not conftest's 8): a third of the compile time.
  monkeypatch.setenv("XLA_FLAGS", "")
  t0 = time.perf_counter()
  nbclient.NotebookClient(
    nb,
    timeout=240,
    kernel_name="python3",
    resources={"metadata": {"path": os.path.dirname(_NOTEBOOK)}},
  ).execute()
  seconds = time.perf_counter() - t0
  print(f"notebook executed in {seconds:.0f} s; per code cell:", _cell_seconds(nb))
  text = _text(nb)
  assert "6 steps in" in text, text[-3000:]
  assert "Barlow Twins: linear top-1" in text
  assert "before: mean diagonal" in text and "after:  mean diagonal" in text
  images = sum(
    "image/png" in out.get("data", {})
    for cell in nb.cells
    if cell.cell_type == "code"
    for out in cell.get("outputs", [])
  )
  assert images >= 3, "view pairs, loss curve and heatmaps should each draw a figure"
  assert (workdir / "results.json").exists()
  assert "compute dtype float32: cpu" in text
  line = next(t for t in text.splitlines() if t.startswith("VIEW_STATS "))
  stats = json.loads(line[len("VIEW_STATS ") :])
  drawn, views = stats["drawn"], stats["views"]
  assert stats["count"] == 16  # 8 pairs.
  assert 0.0 <= drawn["min"] and drawn["max"] <= 1.0
  for key in ("min", "max", "mean"):
    assert abs(drawn[key] - views[key]) < 1e-6, stats
  assert stats["max_abs_difference"] < 1e-6, stats


_VIEW_CHECK = """
import json
import numpy as np
images = [np.asarray(im.get_array(), np.float64) for ax in views_fig.axes for im in ax.images]
pixels = [batch[k][i] / 255.0 for i in range(len(images) // 2) for k in ("view_a", "view_b")]
stat = lambda x: {"min": float(np.min(x)), "max": float(np.max(x)), "mean": float(np.mean(x))}
diff = max(float(np.abs(a - b).max()) for a, b in zip(images, pixels))
out = {"count": len(images), "drawn": stat(images), "views": stat(pixels)}
print("VIEW_STATS " + json.dumps({**out, "max_abs_difference": diff}))
"""


def _text(nb) -> str:
  """The stream and text outputs of every code cell, joined."""
  parts = []
  for cell in nb["cells"]:
    if cell["cell_type"] != "code":
      continue
    for out in cell.get("outputs", []):
      for value in (out.get("text", ""), out.get("data", {}).get("text/plain", "")):
        parts.append(value if isinstance(value, str) else "".join(value))
  return "\n".join(parts)


def _cell_seconds(nb) -> list[float]:
  from datetime import datetime

  out = []
  for cell in nb.cells:
    timing = cell.get("metadata", {}).get("execution", {})
    if cell.cell_type == "code" and "iopub.execute_input" in timing:
      start = datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
      end = datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
      out.append(round((end - start).total_seconds(), 1))
  return out


@pytest.mark.parametrize(
  "platform, kind, capability, dtype",
  [
    ("gpu", "Tesla T4", "7.5", "float32"),
    ("gpu", "Tesla V100-SXM2-16GB", "7.0", "float32"),
    ("gpu", "NVIDIA A100-SXM4-40GB", "8.0", "bfloat16"),
    ("gpu", "NVIDIA L4", "8.9", "bfloat16"),
    ("gpu", "NVIDIA H100 80GB HBM3", "9.0", "bfloat16"),
    ("gpu", "AMD Instinct MI250X", "gfx90a", "float32"),
    ("tpu", "TPU v5 lite", None, "bfloat16"),
    ("cpu", "cpu", None, "float32"),
  ],
)
def test_the_notebook_dtype_follows_the_accelerator(platform, kind, capability, dtype):
  import types

  from barlow_jax.tools.notebook import choose_dtype

  device = types.SimpleNamespace(platform=platform, device_kind=kind)
  if capability is not None:
    device.compute_capability = capability
  chosen, why = choose_dtype(device)
  assert chosen == dtype and kind in why


def test_the_notebook_chooses_the_dtype_of_this_machine():
  import jax

  from barlow_jax.tools.notebook import choose_dtype

  assert choose_dtype(jax.devices()[0])[0] == "float32"  # The tests run on CPUs.

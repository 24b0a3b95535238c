"""experiments/colab_demo.ipynb runs end to end (headless, CPU, digits, a tiny network)."""

import json
import os
import time

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NOTEBOOK = os.path.join(_ROOT, "experiments", "colab_demo.ipynb")


def test_the_committed_notebook_has_no_outputs_and_a_parameters_cell():
  nb = json.load(open(_NOTEBOOK))
  code = [c for c in nb["cells"] if c["cell_type"] == "code"]
  assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
  assert "parameters" in code[0]["metadata"].get("tags", [])
  assert "BT_DEMO_" in "".join(code[0]["source"])


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
  for name, value in env.items():
    monkeypatch.setenv(f"BT_DEMO_{name}", value)
  # The kernel is a fresh interpreter: it must find the repository's packages.
  monkeypatch.setenv("PYTHONPATH", _ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  # One CPU device in the kernel (not conftest's 8): a third of the compile time.
  monkeypatch.setenv("XLA_FLAGS", "")
  nb = nbformat.read(_NOTEBOOK, as_version=4)
  t0 = time.perf_counter()
  nbclient.NotebookClient(
    nb,
    timeout=240,
    kernel_name="python3",
    resources={"metadata": {"path": os.path.dirname(_NOTEBOOK)}},
  ).execute()
  seconds = time.perf_counter() - t0
  print(f"notebook executed in {seconds:.0f} s; per code cell:", _cell_seconds(nb))
  text = "\n".join(
    out.get("text", "") if isinstance(out.get("text", ""), str) else "".join(out["text"])
    for cell in nb.cells
    if cell.cell_type == "code"
    for out in cell.get("outputs", [])
  )
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

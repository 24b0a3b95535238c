"""`python -m barlow_jax.benchmark step` and the accelerator suite, tiny, on the CPU."""

import json
import os
import subprocess
import sys

import pytest

from barlow_jax.benchmarks import step, suite

TINY = ["--backbone=ResNet18", "--width=0.125", "--projector=16-16-16", "--batch=4"]
TINY += ["--image_size=32", "--steps=2", "--warmup=1"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env_without_tensorflow(tmp_path) -> dict:
  """The accelerator images' situation: TensorFlow, TFDS and clu are not importable; one device."""
  site = tmp_path / "site"
  site.mkdir()
  (site / "sitecustomize.py").write_text(
    "import sys\nfor m in ('tensorflow', 'tensorflow_datasets', 'clu'):\n  sys.modules[m] = None\n"
  )
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), ROOT]))
  env["XLA_FLAGS"] = ""  # One CPU device: one small compilation.
  return env


@pytest.mark.slow  # Two ResNet-18 step compilations: 1-3 minutes on 2 shared cores.
def test_step_benchmark_runs_without_tensorflow_with_the_torch_peer(tmp_path):
  pytest.importorskip("torch")
  out = tmp_path / "step.json"
  cmd = [sys.executable, "-m", "barlow_jax.benchmark", "step", *TINY, "--peer=torch"]
  cmd += ["--on_device=both", f"--out={out}"]
  proc = subprocess.run(
    cmd, env=_env_without_tensorflow(tmp_path), capture_output=True, text=True, cwd=ROOT
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  host = result["modes"]["host_augment"]
  assert host["device_images_per_second"] == pytest.approx(4 / host["device_step_seconds"])
  assert host["flops_per_image"] > 0 and host["num_compiles"] == 1
  assert abs(host["flops_per_image_analytic"] / host["flops_per_image"] - 1) < 0.02
  assert result["device_images_per_second"] == host["device_images_per_second"]
  assert "input pipeline not measured: TensorFlow is not installed" in result["notes"]
  variants = {v["variant"]: v for v in result["peer"]["variants"]}
  assert set(variants) == {"reference", "tuned"}
  for v in variants.values():
    assert v["device"].startswith("cpu") and v["images_per_second"] > 0
    assert v["jax_speedup"] == pytest.approx(
      host["device_images_per_second"] / v["images_per_second"]
    )
  assert "PyTorch reference" in proc.stdout and "JAX / this" in proc.stdout


def test_step_benchmark_asks_for_tensorflow_for_the_pipeline(tmp_path):
  cmd = [sys.executable, "-m", "barlow_jax.benchmark", "step", "--input=pipeline"]
  proc = subprocess.run(
    cmd, env=_env_without_tensorflow(tmp_path), capture_output=True, text=True, cwd=ROOT
  )
  assert proc.returncode == 2
  assert "--input=pipeline needs TensorFlow" in proc.stderr


def test_peak_flops_of_known_and_unknown_chips():
  assert step.peak_flops("NVIDIA H200") == 989e12
  assert step.peak_flops("NVIDIA H100 PCIe") == 756e12
  assert step.peak_flops("cpu") != step.peak_flops("cpu")  # NaN: no MFU on unknown chips.
  assert step.peak_flops("cpu", override_tflops=2.0) == 2e12


def test_suite_part_time_limit_kills_a_silent_hang(tmp_path):
  log = suite.SuiteLog(str(tmp_path / "suite.log"))
  cmd = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(600)"]
  result = suite.run_part(log, "hang", cmd, timeout=3)
  log.close()
  assert result["status"] == "timeout after 3 s" and result["seconds"] < 30
  assert "[hang] started" in (tmp_path / "suite.log").read_text()


def test_suite_markdown_tables_and_ratios():
  step_result = {
    "backbone": "ResNet50",
    "projector": "8192-8192-8192",
    "batch": 256,
    "image_size": 224,
    "steps": 20,
    # XLA:GPU's cost analysis misses the cuDNN convolutions; MFU is the analytic count's.
    "flops_per_image": 0.82e9,
    "flops_per_image_analytic": 50e9,
    "flops_per_step": 256 * 0.82e9,
    "peak_flops": 1000e12,
    "device_images_per_second": 4000.0,
    "device_step_seconds": 0.064,
    "peer": {
      "variants": [
        {"variant": "reference", "images_per_second": 2000.0, "step_seconds": 0.128},
        {"variant": "tuned", "error": "RuntimeError: CUDA out of memory"},
      ]
    },
  }
  on_device = {
    "device_images_per_second": 3200.0,
    "device_step_seconds": 0.080,
    "flops_per_step": 256 * 0.83e9,
    "flops_per_image": 0.83e9,
    "flops_per_image_analytic": 51e9,
  }
  results = {
    "environment": {"gpu": "NVIDIA H200", "host_cpus": 16, "jax": "0.11.2", "flax": "x"}
    | {"torch": "2.11", "date_utc": "2026-11-30 21:00"},
    "parts": {"step": {"status": "ok"}, "torch_compiled": {"status": "not run: 10 s left"}},
    "step": step_result,
    "step_on_device": on_device,
    "loss": [],
  }
  text = suite.markdown(results)
  assert "Device: NVIDIA H200; 16 host CPUs" in text
  assert "| JAX, bf16, host augmentations | 4000 | 64.0 | 20.0% | 1.00x |" in text
  assert "| JAX, bf16, `augment.on_device=True` | 3200 | 80.0 | 16.3% | 1.25x |" in text
  assert "fp16 autocast + GradScaler, LARS | 2000 | 128.0 | 10.0% | 2.00x |" in text
  assert "failed: RuntimeError: CUDA out of memory" in text
  assert "On-device augmentations: 20.0% of the step's time, 1.96% of its FLOPs." in text
  assert "torch_compiled: not run: 10 s left" in text


@pytest.mark.slow
def test_suite_tiny_runs_every_part_without_tensorflow(tmp_path):
  pytest.importorskip("torch")
  cmd = [sys.executable, "-m", "barlow_jax.benchmark", "suite", "--tiny", "--budget=1500"]
  cmd += [f"--out_dir={tmp_path}", "--parts", "step", "loss"]
  proc = subprocess.run(
    cmd, env=_env_without_tensorflow(tmp_path), capture_output=True, text=True, cwd=ROOT
  )
  assert proc.returncode == 0, proc.stdout[-3000:]
  results = json.loads((tmp_path / "suite.json").read_text())
  assert results["parts"]["step"]["status"] == "ok", results["parts"]
  assert all(p["status"] == "ok" for k, p in results["parts"].items() if k.startswith("loss"))
  table = (tmp_path / "suite.md").read_text()
  assert "| JAX, bf16, host augmentations |" in table and "| 64 | 256 | auto |" in table


def test_suite_runs_jax_and_torch_apart_when_the_joint_step_part_leaves_nothing(
  tmp_path, monkeypatch
):
  calls = []

  def fake_run_part(log, name, cmd, timeout):
    calls.append(name)
    out = next((a.split("=", 1)[1] for a in cmd if a.startswith("--out=")), None)
    if "--out" in cmd:
      out = cmd[cmd.index("--out") + 1]
    canned = {
      "step_jax_alone": {"device_images_per_second": 10.0, "device_step_seconds": 0.8},
      "torch_alone": {"variants": [{"variant": "reference", "images_per_second": 5.0}]},
      "loss": {"rows": []},
    }
    if name in canned:
      with open(out, "w") as f:
        json.dump(canned[name], f)
    return {"status": "ok" if name in canned else "failed (exit 1)", "seconds": 1.0}

  monkeypatch.setattr(suite, "run_part", fake_run_part)
  argv = ["suite", "--tiny", f"--out_dir={tmp_path}", "--parts", "step", "loss"]
  assert suite.main(argv) == 0
  assert calls == ["step", "step_jax_alone", "torch_alone", "loss", "loss"]
  results = json.loads((tmp_path / "suite.json").read_text())
  assert results["step"]["device_images_per_second"] == 10.0
  assert results["step"]["peer"]["variants"][0]["images_per_second"] == 5.0
  assert results["parts"]["step"]["status"] == "failed (exit 1)"
  assert (
    "| PyTorch reference: fp16 autocast + GradScaler, LARS | 5 |"
    in (tmp_path / "suite.md").read_text()
  )


def test_step_peer_without_torch_is_skipped_with_a_message(monkeypatch):
  real_has = step.has_module
  monkeypatch.setattr(step, "has_module", lambda module: module != "torch" and real_has(module))
  args = step.parse_flags(["step", *TINY, "--peer=torch"])
  peer = step.run_peer(args)
  assert peer == {"skipped": "torch is not installed (pip install torch): no PyTorch peer measured"}
  result = {
    "backbone": "ResNet18",
    "projector": "16-16-16",
    "optimizer": "lars",
    "batch": 4,
    "image_size": 32,
    "dtype": "float32",
    "devices": 1,
    "device_kind": "cpu",
    "host_cpus": 2,
    "modes": {},
    "notes": [],
    "peer": peer,
  }
  assert "PyTorch peer           torch is not installed (pip install torch)" in step.table(result)


def test_suite_markdown_without_a_step_result():
  env = {"host_cpus": 2, "jax": "0.10", "flax": "0.12", "torch": None, "date_utc": "today"}
  results = {"environment": env, "parts": {"step": {"status": "timeout after 300 s"}}}
  text = suite.markdown(results | {"step": None, "loss": []})
  assert text.startswith("Device: unknown device;") and "step: timeout after 300 s" in text

# ruff: noqa: E501  (HLO text lines as XLA prints them)
"""`barlow_jax.benchmarks.profile`: the step's trace summed by op class, on a known synthetic
trace and on a real CPU trace of a tiny step."""

import gzip
import json
import os
import subprocess
import sys

import pytest

from barlow_jax.benchmarks import profile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HLO = """
HloModule jit_step, entry_computation_layout={()}

%fused_computation.7 (param_0: f32[8]) -> f32[8] {
  %param_0 = f32[8]{0} parameter(0)
  ROOT %sub.1 = f32[8]{0} subtract(%param_0, %param_0), metadata={op_name="jit(step)/jvp(BarlowTwins)/backbone/bn1/sub"}
}

ENTRY %main.1 (p: f32[8]) -> f32[8] {
  %conv.1 = f32[8]{0} convolution(%p, %p), metadata={op_name="jit(step)/jvp(BarlowTwins)/backbone/conv1/conv_general_dilated"}
  %cudnn.2 = (f32[8]{0}, u8[0]{0}) custom-call(%p, %p), custom_call_target="__cudnn$convForward", metadata={op_name="jit(step)/transpose(jvp(BarlowTwins))/backbone/conv1/conv_general_dilated"}
  %gemm.3 = f32[8]{0} custom-call(%p, %p), custom_call_target="__cublas$gemm", metadata={op_name="jit(step)/jvp(BarlowTwins)/projector/linear0/dot_general"}
  %fusion.4 = f32[8]{0} fusion(%p), kind=kLoop, calls=%fused_computation.7
  %fusion.5 = f32[8]{0} fusion(%p), kind=kLoop, calls=%fused_computation.9, metadata={op_name="jit(step)/transpose(jvp(loss))/mul"}
  %fusion.6 = f32[8]{0} fusion(%p), kind=kLoop, calls=%fused_computation.9, metadata={op_name="jit(step)/optimizer/jit(norm)/sqrt"}
  %copy_transpose_fusion = f32[8]{0} fusion(%p), kind=kLoop, calls=%fused_computation.10
  ROOT %all-reduce.8 = f32[8]{0} all-reduce(%p), replica_groups={}
}
"""


def test_instructions_are_classified_by_opcode_target_and_name_stack():
  instructions = profile.hlo_instructions(HLO)
  classes = {name: profile.classify(name, *info) for name, info in instructions.items()}
  assert classes["conv.1"] == classes["cudnn.2"] == "convolutions"
  assert classes["gemm.3"] == "projector_matmuls"
  assert classes["fusion.4"] == "batchnorm_and_elementwise"  # Its fused computation's metadata.
  assert classes["fusion.5"] == "loss"
  assert classes["fusion.6"] == "optimizer_update"
  assert classes["copy_transpose_fusion"] == "copies_transposes_layout"
  assert classes["all-reduce.8"] == "collectives"


def _event(ts, dur, op, module="jit_step"):
  return {"ph": "X", "pid": 1, "tid": 2, "ts": ts, "dur": dur, "name": op} | {
    "args": {"hlo_op": op, "hlo_module": module}
  }


def test_summary_of_a_known_trace_has_the_idle_gaps(tmp_path):
  # One step of 100 us: conv 0-40, gemm 50-60, fusion.4 60-70 and an overlapping fusion.6 65-75,
  # copy 90-100; a python event and another module's op do not count. Idle: 40-50 and 75-90.
  events = [_event(0, 40, "conv.1"), _event(50, 10, "gemm.3"), _event(60, 10, "fusion.4")]
  events += [_event(65, 10, "fusion.6"), _event(90, 10, "copy_transpose_fusion")]
  events += [{"ph": "X", "ts": 0, "dur": 500, "name": "python"}, _event(0, 500, "x", "jit_other")]
  run = tmp_path / "plugins" / "profile" / "run1"
  run.mkdir(parents=True)
  with gzip.open(run / "perfetto_trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)
  summary = profile.summarise(str(tmp_path), HLO, steps=1)
  assert summary["span_seconds"] == pytest.approx(100e-6)
  assert summary["seconds"]["convolutions"] == pytest.approx(40e-6)
  assert summary["seconds"]["projector_matmuls"] == pytest.approx(10e-6)
  assert summary["seconds"]["optimizer_update"] == pytest.approx(10e-6)
  assert summary["share"]["idle"] == pytest.approx(0.25)
  assert summary["num_ops"] == 5
  assert "| convolutions | 0.04 | 40.0% |" in profile.markdown(summary)


def test_summary_without_a_trace_says_how_to_capture_one(tmp_path):
  with pytest.raises(FileNotFoundError, match="create_perfetto_trace=True"):
    profile.summarise(str(tmp_path), HLO, steps=1)


def test_cpu_trace_of_a_tiny_step(tmp_path):
  # One device, as on a one-GPU host (the tests' 8 emulated devices would wait on each other).
  out = tmp_path / "profile"
  cmd = [sys.executable, "-m", "barlow_jax.benchmarks.profile", "--backbone=ResNet18"]
  cmd += ["--width=0.125", "--projector=16-16-16", "--batch=8", "--image_size=32"]
  cmd += ["--dtype=bfloat16", "--steps=2", "--warmup=1", f"--out_dir={out}"]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((out / "profile.json").read_text())
  seconds = summary["seconds"]
  assert summary["devices"] == 1 and summary["num_ops"] > 100 and summary["span_seconds"] > 0
  # Each class of a ResNet step shows up. Which one is the largest is not asserted: on a shared
  # CPU the ops' times follow the machine's other load (the convolutions were not, at load 15).
  for part in (
    "convolutions",
    "batchnorm_and_elementwise",
    "loss",
    "optimizer_update",
    "projector_matmuls",
  ):
    assert seconds[part] > 0, part
  assert seconds["other"] < 0.2 * summary["span_seconds"]
  assert "| convolutions |" in (out / "profile.md").read_text()

"""`python -m barlow_jax.benchmark compile`'s functions on TPU slices (libtpu, no TPU needed), and
the communication audit of the training step: which collectives it holds, and why each is there.

The TPU cases compile the tiny test config (tests/configs_tiny.py) for `v5e:2x2` (4 chips) and
`v4:2x2x1` (4 megacore chips); libtpu is in the `[test]` extra, built for x86-64 Linux only.
"""

import math
import platform

import jax
import numpy as np
import pytest

from barlow_jax import models, parallel
from barlow_jax.benchmarks import compile as compile_benchmark
from barlow_jax.benchmarks import compile_programs, tpu_slices
from tests import configs_tiny

_X86_LINUX = platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64")
needs_libtpu = pytest.mark.skipif(
  not _X86_LINUX,
  reason=f"libtpu is built for x86-64 Linux only; this is {platform.system()} {platform.machine()}",
)

# The data-parallel Barlow Twins step's collectives (docs/scaling.md, "What a step sends"):
# - all-reduce: the BatchNorm batch statistics of every layer and view (forward) and their
#   gradients (backward), the embeddings' batch mean and variance, the gradient of every
#   parameter, the online probe's gradient and metrics, the monitors' C statistics and the
#   effective rank's Gram matrix x^T x and column norms (the dense loss's C too, when it is
#   dense: per-device partial sums of C reduced).
# - all-gather: the Gram form of the loss (`losses`, method "auto" at batch < D, as here: 16 <
#   32) gathers the normalised embeddings [N, D] to build the N x N Gram matrices, forward and
#   backward.
# - reduce-scatter: only with FSDP (the gradient of a sharded leaf); none here.
# - all-to-all, collective-permute: none. An SVD of the batch-sharded representations put 7
#   all-to-all and 54 collective-permute ops (a distributed QDWH iteration) and 70 more
#   all-gathers into the TPU step; `monitors.effective_rank` works on the replicated F x F
#   Gram matrix instead.
_TPU_STEP = {"all-reduce", "all-gather"}
_CPU_STEP = {"all-reduce", "all-gather"}
# Eval-mode BatchNorm and replicated variables: extracting features communicates nothing.
_FEATURES = set()


def _kinds(program: dict) -> set[str]:
  return {kind for kind, v in program["collectives"].items() if v["count"]}


def _param_bytes(config) -> tuple[int, int]:
  """(whole model, backbone) parameter bytes: shapes times dtype sizes."""
  model = models.create_model(config.model)
  x = jax.ShapeDtypeStruct((2, config.dataset.image_size, config.dataset.image_size, 3), np.float32)
  init = lambda k, v: model.init(k, v, v, train=False)
  params = jax.eval_shape(init, jax.random.key(0), x)["params"]
  size = lambda tree: sum(
    math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree)
  )
  return size(params), size(params["backbone"])


@pytest.fixture(scope="module", params=["v5e:2x2", "v4:2x2x1"])
def tiny_on_slice(request):
  if tpu_slices.libtpu_missing():
    pytest.fail(tpu_slices.libtpu_missing())  # On x86-64 Linux the [test] extra installs it.
  config = configs_tiny.get_config()
  result = compile_benchmark.compile_slice(
    config, request.param, num_classes=10, programs=("train_step", "features")
  )
  return config, result


@needs_libtpu
def test_tiny_config_compiles_for_the_slice(tiny_on_slice):
  config, result = tiny_on_slice
  spec = tpu_slices.parse_topology(result["topology"])
  assert result["chips"] == result["devices"] == 4  # v4: one megacore device per chip.
  assert result["hosts"] == 1
  assert result["libtpu_version"] == tpu_slices.libtpu_version() != ""
  assert result["hbm_bytes"] == spec.chip.hbm_bytes
  whole, backbone = _param_bytes(config)
  step, feats = result["programs"]["train_step"], result["programs"]["features"]
  assert step["params_bytes"] == whole
  assert feats["params_bytes"] == backbone
  for program in (step, feats):
    assert program["fits"] and program["headroom_bytes"] > 0
    assert program["total_bytes"] >= program["params_bytes"] + program["opt_state_bytes"]
    assert program["flops"] > 0 and program["ideal_step_seconds"] > 0
    assert program["host_callbacks"] == []
  # The state is donated: the new state is written into the old one's buffers.
  assert step["alias_bytes"] >= step["params_bytes"] + step["opt_state_bytes"]
  assert _kinds(step) == _TPU_STEP
  assert _kinds(feats) == _FEATURES
  host = result["per_host"]
  assert host["batch_per_host"] == 16 and host["batch_per_chip"] == 4
  assert host["required_examples_per_second"] == pytest.approx(16 / step["ideal_step_seconds"])


def test_step_collectives_on_8_cpu_devices(devices):
  config = configs_tiny.get_config()
  mesh = parallel.create_mesh(devices)
  program = compile_programs.train_program(config, mesh, num_classes=10)
  analysis = compile_programs.analyse(program, None, None)
  assert _kinds(analysis) == _CPU_STEP
  assert analysis["host_callbacks"] == []


def test_hlo_collectives_and_host_transfers_are_read_from_the_text():
  hlo = "\n".join(
    [
      "  %ar = f32[8,4]{1,0:T(8,128)S(1)} all-reduce(%x), channel_id=1, to_apply=%add",
      "  %ar2 = (f32[2]{0}, bf16[4]{0}) all-reduce-start(%p, %q), to_apply=%add",
      "  %ags = (bf16[2]{0}, bf16[8]{0}) all-gather-start(%y), dimensions={0}",
      "  %agd = bf16[8]{0} all-gather-done(%ags)",
      "  ROOT %cp = s32[3]{0} collective-permute(%z), source_target_pairs={{0,1}}",
      '  %cb = f32[] custom-call(f32[] %w), custom_call_target="xla_python_cpu_callback"',
      "  %o = token[] outfeed(f32[] %w, token[] %t)",
    ]
  )
  found = tpu_slices.collectives(hlo)
  assert found["all-reduce"] == {"count": 2, "bytes": 8 * 4 * 4 + 2 * 4 + 4 * 2}
  assert found["all-gather"] == {"count": 1, "bytes": 8 * 2}
  assert found["collective-permute"] == {"count": 1, "bytes": 3 * 4}
  assert found["all-to-all"] == found["reduce-scatter"] == {"count": 0, "bytes": 0}
  assert tpu_slices.host_transfers(hlo) == ["outfeed x1", "xla_python_cpu_callback x1"]


def test_topology_names_and_slices():
  assert tpu_slices.parse_topology("v4:2x2x4").chips == 16
  assert tpu_slices.parse_topology("v4:2x2x4").accelerator_type == "v4-32"
  assert tpu_slices.parse_topology("v5e:16x16").accelerator_type == "v5litepod-256"
  assert tpu_slices.parse_topology("v6e:2x4").accelerator_type == "v6e-8"
  for bad in ("v3:2x2", "v5e-16", "v5e:4", "v5e:0x4"):
    with pytest.raises(ValueError, match="topology"):
      tpu_slices.parse_topology(bad)


@pytest.mark.parametrize("start, largest", [(16, 40), (64, 40), (4, 4), (8, 0)])
def test_max_batch_bisects_over_multiples_of_the_chips(monkeypatch, start, largest):
  config = configs_tiny.get_config()
  config.batch_size = start
  compiled = []

  def fake_compile(trial, topology, *, num_classes, programs):
    batch = int(trial.batch_size)
    compiled.append(batch)
    fits = batch <= largest
    return {"programs": {"train_step": {"fits": fits, "total_bytes": batch}}}

  monkeypatch.setattr(compile_benchmark, "compile_slice", fake_compile)
  found = compile_benchmark.max_batch(config, "v5e:2x2", num_classes=10)
  assert found["max_batch"] == largest
  assert all(b % 4 == 0 for b in compiled) and len(compiled) == len(set(compiled))


@needs_libtpu
def test_a_host_too_small_for_the_compile_is_told_before_compiling(monkeypatch, capsys):
  from barlow_jax.benchmarks import compile_memory

  monkeypatch.setattr(compile_memory, "available_bytes", lambda: 4 * 10**9)
  monkeypatch.setattr(
    compile_benchmark,
    "compile_slice",
    lambda *a, **k: pytest.fail("compiled on a host the estimate says is too small"),
  )
  argv = ["compile", "--topology=v4:2x2x4", "--config=configs/imagenet_resnet50.py"]
  with pytest.raises(SystemExit) as exit_info:
    compile_benchmark.main([*argv, "--num_classes=1000"])
  assert exit_info.value.code == 1
  err = capsys.readouterr().err
  # v4 compiles need 1.6x v5e's line (9.0 GB measured for this config on v4:2x2x4).
  assert "needs about 9 GB of host memory" in err and "4.0 GB available" in err
  assert "--force" in err
  # 8 examples per chip on 256 chips: small enough for this machine.
  spec = tpu_slices.parse_topology("v5e:16x16")
  assert compile_memory.estimate_bytes(configs_tiny.get_config(), spec) < 8 * 10**9


@needs_libtpu
def test_a_batch_the_slice_cannot_split_gets_trainings_error():
  config = configs_tiny.get_config()
  config.batch_size = 18
  with pytest.raises(ValueError, match=r"config.batch_size=18 .* divisible by the 4 devices"):
    compile_benchmark.compile_slice(config, "v5e:2x2", num_classes=10, programs=("train_step",))
  config.batch_size = 3 * 64  # 64 hosts of v5e-256: 3 per host, not 1 per chip.
  with pytest.raises(ValueError, match=r"divisible by the 256 devices"):
    compile_benchmark.compile_slice(config, "v5e:16x16", num_classes=10, programs=("train_step",))


def test_a_slice_libtpu_is_known_to_crash_on_is_named_before_compiling():
  v6e = tpu_slices.parse_topology("v6e:16x16")
  text = tpu_slices.known_crash(v6e, "0.0.42.1")
  assert "v6e" in text and "64 chips" in text and "libtpu==0.0.52" in text
  assert tpu_slices.known_crash(tpu_slices.parse_topology("v6e:2x4"), "0.0.42.1") == text
  assert tpu_slices.known_crash(v6e, "0.0.43") == ""
  assert tpu_slices.known_crash(tpu_slices.parse_topology("v5e:16x16"), "0.0.42.1") == ""

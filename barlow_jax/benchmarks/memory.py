r"""Per-device memory of the training step for N devices, from XLA's analysis: compile only.

    python -m barlow_jax.benchmark memory --backbone=ResNet50 --projector=32768-32768-32768 \
        --batch=2048 --devices=8 [--fsdp_min_size=1048576]

Answers "does it fit?" before a pod is rented. The step is the one `barlow_jax.train` runs (both
views through backbone and projector, the loss, the backward pass, the optimizer update, the
online probe) for the chosen device count, global batch and `config.parallel.fsdp_min_size`. It
is lowered from abstract shapes (`jax.ShapeDtypeStruct`s carrying their shardings) and compiled;
nothing is allocated, so a 65536-wide projector "on" 256 devices compiles on a laptop.

By default the N devices are emulated CPU devices (a subprocess with
`--xla_force_host_platform_device_count=N`); `--native` compiles for this machine's own
accelerators instead (it must have N). Columns, per device:

- parameters, optimizer state: exact, from the shapes and the shardings (what one device holds);
- other inputs: BatchNorm statistics, the online probe, the step counter and the batch shard;
- activations + temporaries: XLA's temp buffers for the whole step (the activations kept for
  the backward pass, the all-gathered kernels under FSDP, gradients before the update, ...);
  XLA's buffer assignment reports them as one figure;
- total = arguments + outputs - donated (aliased) outputs + temporaries.

The CPU compiler's temporaries are an estimate of a TPU's or GPU's: their compilers fuse and lay
out differently (the parameter and optimizer figures are exact on every platform).
"""

import math
import os
import subprocess
import sys
import time

from absl import app, flags

from barlow_jax import benchmarks, cli

# Accelerator memories the table is read against (bytes).
TARGETS = {
  "v3 16 GiB": 16 * 2**30,
  "v4 32 GiB": 32 * 2**30,
  "H100 80 GB": 80 * 10**9,
  "H200 141 GB": 141 * 10**9,
}
_CHILD = "BARLOW_JAX_MEMORY_CHILD"


def define_flags(flag_values: flags.FlagValues) -> None:
  """This benchmark's flags (`barlow_jax.cli.Command`)."""
  fv = {"flag_values": flag_values}
  benchmarks.define_shared_flags(
    flag_values,
    backbone="ResNet50",
    projector="8192-8192-8192",
    batch=2048,
    image_size=224,
    dtype="bfloat16",
    optimizer="lars",
    out="",
  )
  flags.DEFINE_integer("devices", 8, "device count to compile for", **fv)
  flags.DEFINE_integer("fsdp_min_size", 0, "config.parallel.fsdp_min_size (0: replicated)", **fv)
  flags.DEFINE_enum(
    "views_dtype",
    "uint8",
    ("uint8", "float32"),
    "the batch's views: uint8 crops (the input pipeline's) or host-normalised float32",
    **fv,
  )
  flags.DEFINE_string("loss_method", "auto", "config.loss.method", **fv)
  flags.DEFINE_integer("num_classes", 1000, "online probe classes (0: no probe)", **fv)
  flags.DEFINE_bool("native", False, "compile for this machine's devices, not emulated CPUs", **fv)
  names = ["batch", "devices", "image_size", "fsdp_min_size"]
  flags.register_multi_flags_validator(
    names,
    lambda v: (
      v["batch"] >= 1 and v["devices"] >= 1 and v["image_size"] >= 8 and v["fsdp_min_size"] >= 0
    ),
    "--batch >= 1, --devices >= 1, --image_size >= 8 and --fsdp_min_size >= 0",
    **fv,
  )
  flags.register_multi_flags_validator(
    ["batch", "devices"],
    lambda v: v["devices"] < 1 or v["batch"] % v["devices"] == 0,
    "--batch must be divisible by --devices",
    **fv,
  )


def config_for(args):
  """The run config of the measured step (ImageNet reference values plus the flags)."""
  from barlow_jax.config import base_config

  config = base_config()
  config.dataset.image_size = args.image_size
  config.model.backbone = args.backbone
  config.model.projector = args.projector
  config.model.dtype = args.dtype
  config.loss.method = args.loss_method
  config.optim.name = args.optimizer
  config.batch_size = args.batch
  config.parallel.fsdp_min_size = args.fsdp_min_size
  config.online_probe = args.num_classes > 0
  return config


def _abstract(tree, shardings):
  import jax

  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
  )


# Long by its docstring and the abstract shapes it builds for its one compile, read top to bottom.
def _abstract_batch(config, mesh, num_classes: int, views_dtype: str) -> dict:
  """The global batch the step takes, as sharded shapes: two views (and labels for the probe)."""
  import jax
  import jax.numpy as jnp

  from barlow_jax import parallel

  batch_sharding = parallel.batch_sharding(mesh)
  size = int(config.dataset.image_size)
  view = jax.ShapeDtypeStruct(
    (int(config.batch_size), size, size, 3), jnp.dtype(views_dtype), sharding=batch_sharding
  )
  batch = {"view_a": view, "view_b": view}
  if num_classes:
    batch["label"] = jax.ShapeDtypeStruct(
      (int(config.batch_size),), jnp.int32, sharding=batch_sharding
    )
  return batch


def step_memory(
  config, mesh, *, num_classes: int, steps_per_epoch: int = 1, views_dtype: str = "uint8"
) -> dict:
  """Per-device bytes of `config`'s training step on `mesh`, compiled from abstract shapes.

  Args:
    config: run config (`config.batch_size` global examples of `config.dataset.image_size` px,
      `config.parallel.fsdp_min_size`).
    mesh: the mesh to compile for (`parallel.create_mesh()`).
    num_classes: online probe classes (0: none).
    views_dtype: dtype of the batch's two views ("uint8" crops, normalised inside the step).
    steps_per_epoch: for the schedule only (no effect on memory).

  Returns:
    `params_bytes`, `opt_state_bytes` (exact, from the shardings), `other_inputs_bytes`,
    `temp_bytes`, `argument_bytes`, `output_bytes`, `alias_bytes`, `total_bytes` (XLA's
    `memory_analysis()` of the compiled step), `num_params`, `num_projector_params`,
    `lower_seconds`, `compile_seconds`, and the step's FLOPs per example (a pair of views):
    `flops_per_image_analytic` (`barlow_jax.benchmarks.flops`, exact from the shapes) and
    `flops_per_image` (XLA's cost analysis of the lowered step).
  """
  # Long for its docstring (the 14 keys it returns) and the flat dict of them, not for its logic.
  import functools

  import jax

  from barlow_jax import parallel, train_state, train_step
  from barlow_jax.benchmarks import flops, step_jax

  t0 = time.perf_counter()
  min_size = parallel.fsdp_min_size(config)
  init = functools.partial(
    train_state.create_train_state,
    config,
    mesh=mesh,
    steps_per_epoch=steps_per_epoch,
    num_classes=num_classes,
  )
  shapes = jax.eval_shape(init, jax.random.key(0))
  shardings = parallel.state_shardings(shapes, mesh, fsdp_min_size=min_size)
  state = _abstract(shapes, shardings)
  batch = _abstract_batch(config, mesh, num_classes, views_dtype)
  lowered = train_step.jit_train_step(config, mesh, state).lower(state, batch)
  lower_seconds = time.perf_counter() - t0
  xla_flops = step_jax.xla_flops(lowered)
  t0 = time.perf_counter()
  analysis = lowered.compile().memory_analysis()
  compile_seconds = time.perf_counter() - t0

  params = parallel.bytes_per_device(shapes.params, shardings.params)
  opt_state = parallel.bytes_per_device(shapes.opt_state, shardings.opt_state)
  arguments = int(analysis.argument_size_in_bytes)
  outputs, aliased = int(analysis.output_size_in_bytes), int(analysis.alias_size_in_bytes)
  temp = int(analysis.temp_size_in_bytes)
  count = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
  return {
    "num_params": count(shapes.params),
    "num_projector_params": count(shapes.params["projector"]),
    "params_bytes": params,
    "opt_state_bytes": opt_state,
    "other_inputs_bytes": arguments - params - opt_state,
    "temp_bytes": temp,
    "argument_bytes": arguments,
    "output_bytes": outputs,
    "alias_bytes": aliased,
    "total_bytes": arguments + outputs - aliased + temp,
    "lower_seconds": lower_seconds,
    "compile_seconds": compile_seconds,
    "flops_per_image": xla_flops / int(config.batch_size),
    "flops_per_image_analytic": flops.step_flops(config, num_classes=num_classes)[
      "flops_per_example"
    ],
  }


def run(args) -> dict:
  """Compiles the step for `args.devices` devices; returns the per-device figures (bytes)."""
  import jax

  from barlow_jax import parallel, train_setup

  if jax.device_count() != args.devices:
    raise ValueError(
      f"--devices={args.devices} but this process has {jax.device_count()} devices; drop "
      "--native to compile for emulated CPU devices."
    )
  config = config_for(args)
  train_setup.validate_pretraining(config)
  # The ImageNet epoch only sets the schedule's length.
  steps_per_epoch = max(1_281_167 // args.batch, 1)
  result = {
    "backbone": args.backbone,
    "projector": args.projector,
    "batch": args.batch,
    "image_size": args.image_size,
    "dtype": args.dtype,
    "optimizer": args.optimizer,
    "devices": args.devices,
    "platform": jax.devices()[0].platform,
    "device_kind": jax.devices()[0].device_kind,
    "jax_version": jax.__version__,
    "fsdp_min_size": args.fsdp_min_size,
    "views_dtype": args.views_dtype,
  }
  result.update(
    step_memory(
      config,
      parallel.create_mesh(),
      num_classes=args.num_classes,
      steps_per_epoch=steps_per_epoch,
      views_dtype=args.views_dtype,
    )
  )
  result["fits"] = [name for name, size in TARGETS.items() if result["total_bytes"] <= size]
  return result


def _emulated(args: flags.FlagValues) -> int:
  """Reruns this benchmark in a child process that sees `devices` CPU devices."""
  env = dict(os.environ)
  xla = [
    f
    for f in env.get("XLA_FLAGS", "").split()
    if not f.startswith("--xla_force_host_platform_device_count")
  ]
  env["XLA_FLAGS"] = " ".join([*xla, f"--xla_force_host_platform_device_count={args.devices}"])
  env["JAX_PLATFORMS"] = "cpu"
  env["CUDA_VISIBLE_DEVICES"] = ""
  env[_CHILD] = "1"
  own = cli.given_flags(args)
  command = [sys.executable, "-m", "barlow_jax.benchmarks.memory", *own, "--native"]
  return subprocess.run(command, env=env, check=False).returncode


def _gib(n: int) -> str:
  return f"{n / 2**30:.2f} GiB"


def _table(r: dict) -> str:
  fsdp = f"FSDP, leaves >= {r['fsdp_min_size']:,}" if r["fsdp_min_size"] else "replicated"
  rows = [
    ("model", f"{r['backbone']} + {r['projector']} ({r['num_params'] / 1e9:.2f} B parameters)"),
    ("global batch / image / dtype", f"{r['batch']} / {r['image_size']} px / {r['dtype']}"),
    ("devices", f"{r['devices']} x {r['device_kind']} ({r['platform']}), {fsdp}"),
    ("parameters / device", _gib(r["params_bytes"])),
    (f"optimizer state ({r['optimizer']}) / device", _gib(r["opt_state_bytes"])),
    ("other inputs (BN stats, probe, batch)", _gib(r["other_inputs_bytes"])),
    ("activations + temporaries", _gib(r["temp_bytes"])),
    ("total / device", _gib(r["total_bytes"])),
    ("fits", ", ".join(r["fits"]) or "none of " + ", ".join(TARGETS)),
    (
      "GFLOPs per example",
      f"{r['flops_per_image_analytic'] / 1e9:.2f} analytic, "
      f"{r['flops_per_image'] / 1e9:.2f} XLA cost analysis",
    ),
    ("lower + compile", f"{r['lower_seconds']:.0f} s + {r['compile_seconds']:.0f} s"),
  ]
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _command(args: flags.FlagValues, argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not args.native and not os.environ.get(_CHILD):
    return _emulated(args)
  result = run(args)
  print(_table(result))
  if args.out:
    benchmarks.write_json(result, args.out)
    print(f"wrote {args.out}")
  return 0


COMMAND = cli.Command("python -m barlow_jax.benchmark memory", define_flags, _command, __doc__)


def main(argv: list[str]) -> int:
  """The command line in-process: `argv[0]` is "memory", then the flags."""
  return COMMAND(argv)


if __name__ == "__main__":
  COMMAND.run()

r"""A config compiled for a Cloud TPU slice on any x86-64 Linux machine: does it fit, how fast?

    python -m barlow_jax.benchmark compile --topology=v5e:16x16 \
        --config=configs/imagenet_resnet50.py [--config.KEY=VALUE ...] [--max_batch] \
        [--num_classes=1000] [--out=FILE.json]

XLA:TPU's compiler (`libtpu`; `pip install 'jax[tpu]==<jax version>'`) compiles, for the slice's
chips, the programs a run executes, built by the functions that run them: the training step
(`train_step.jit_train_step`: shardings, donation, FSDP, `augment.on_device`, the monitors), the
evaluation's feature extraction and the reference linear probe's head update. Inputs are abstract
shapes carrying their shardings, so nothing is allocated. v4 and v5p compile as their slices run,
one megacore device per chip. Per program, per chip:

- HBM: parameters and optimizer state (exact, from the shardings), other arguments (BatchNorm
  statistics, the online probe, the batch shard), temporaries (activations, gathered FSDP
  kernels, ...), total = arguments + outputs - donated + temporaries; against the chip's HBM;
- FLOPs from XLA:TPU's cost analysis, and the ideal step time at the chip's dense bfloat16 peak
  (a lower bound: no real step reaches the peak);
- the collectives by kind (count, bytes each chip contributes) and host transfers (expected none);
- lower and compile seconds.

The per-host view: the slice's hosts, the batch per host and per chip (checked as training checks
it), and the examples/s each host's input pipeline must deliver at the ideal step time against
the pipeline's measured rate per CPU core. `--max_batch` bisects, over compiles of the training
step, for the largest global batch (a multiple of the chips) that fits.

The compile's host memory grows with the program (see docs/scaling.md); where this machine's
memory is below the estimate for the slice, the command says what host it needs and stops, before
compiling (`--force` compiles anyway).
"""

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from barlow_jax import benchmarks, cli
from barlow_jax.benchmarks import tpu_slices
from barlow_jax.config_validation import UserError

# The host pipeline's two-view 224 px examples per CPU-second per core (`python -m
# barlow_jax.benchmark input`, README: 220 / 193 with host augmentations, 415 / 362 for the
# host part of `augment.on_device`; the lower run of each, shared 2-core x86-64 CPU).
INPUT_RATE_PER_CORE = {False: 193.0, True: 362.0}
PROGRAMS = ("train_step", "features", "linear_probe")


def define_flags(flag_values: flags.FlagValues) -> None:
  """This benchmark's flags (`barlow_jax.cli.Command`)."""
  fv = {"flag_values": flag_values}
  config_flags.DEFINE_config_file(
    "config", None, "Pretraining config, e.g. configs/imagenet_resnet50.py.", lock_config=True, **fv
  )
  flags.DEFINE_string("topology", None, "TPU slice, e.g. v5e:16x16, v4:2x2x4, v6e:2x4.", **fv)
  flags.DEFINE_bool("max_batch", False, "bisect for the largest global batch that fits", **fv)
  flags.DEFINE_integer(
    "num_classes",
    0,
    "classes of the online and linear probes (0: the dataset's, read through barlow_jax.data; "
    "give it where the data is not on this machine, e.g. 1000 for ImageNet)",
    **fv,
  )
  flags.DEFINE_multi_enum(
    "programs", list(PROGRAMS), PROGRAMS, "programs to compile (repeat the flag)", **fv
  )
  flags.DEFINE_bool("force", False, "compile even where this host's memory looks too small", **fv)
  benchmarks.define_shared_flags(flag_values, out="")
  flags.mark_flags_as_required(["config", "topology"], **fv)


def _num_classes(config, given: int) -> int:
  """`given`, or the training split's class count (the linear probe's; the online probe's too)."""
  if given > 0:
    return given
  from barlow_jax import data

  try:
    return data.num_classes(config)
  except Exception as e:  # noqa: BLE001 -- any reason the dataset cannot be opened here.
    raise UserError(
      f"could not read the classes of config.dataset.name={config.dataset.name!r} on this machine "
      f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); pass --num_classes=N (1000 for "
      "ImageNet, 10 for CIFAR-10)."
    ) from None


def per_host(config, spec: tpu_slices.Slice, hosts: int, step_seconds: float | None) -> dict:
  """The batch per host and chip, and the input rate each host needs at `step_seconds`."""
  batch = int(config.batch_size)
  out = {"batch_per_host": batch // hosts, "batch_per_chip": batch // spec.chips}
  on_device = bool(config.augment.on_device)
  rate = INPUT_RATE_PER_CORE[on_device]
  out["input_rate_per_core"] = rate
  if step_seconds:
    needed = out["batch_per_host"] / step_seconds
    out["required_examples_per_second"] = needed
    out["required_cores"] = needed / rate
  return out


def compile_slice(config, topology: str, *, num_classes: int, programs=PROGRAMS) -> dict:
  """Compiles `programs` of `config` for `topology`; the JSON result (see the module docstring).

  Raises:
    ValueError: a topology or a batch the slice cannot take (training's own messages).
    RuntimeError: libtpu missing (what to install) or rejecting the topology.
  """
  import jax

  from barlow_jax import parallel, train_setup
  from barlow_jax.benchmarks import compile_programs

  spec = tpu_slices.parse_topology(topology)
  if "linear_probe" in programs and num_classes < 1:
    raise ValueError(
      f"the linear probe needs the class count: {config.dataset.name!r} has no labels here; "
      "pass --num_classes=N or leave linear_probe out of --programs."
    )
  devices = tpu_slices.slice_devices(spec)
  hosts = tpu_slices.hosts_of(devices)
  train_setup.validate_pretraining(config, devices=len(devices), processes=hosts)
  mesh = parallel.create_mesh(devices)
  chip = spec.chip
  result = {
    "topology": spec.name,
    "accelerator_type": spec.accelerator_type,
    "chips": spec.chips,
    "hosts": hosts,
    "devices": len(devices),
    "device_kind": devices[0].device_kind,
    "hbm_bytes": chip.hbm_bytes,
    "peak_bf16_flops": chip.peak_bf16_flops,
    "chip_source": chip.source,
    "batch": int(config.batch_size),
    "model": f"{config.model.backbone} + {config.model.projector}, {config.model.dtype}",
    "image_size": int(config.dataset.image_size),
    "fsdp_min_size": parallel.fsdp_min_size(config),
    "augment_on_device": bool(config.augment.on_device),
    "jax_version": jax.__version__,
    "libtpu_version": tpu_slices.libtpu_version(),
    "programs": {},
  }
  eval_batch = int(config.eval.probe_batch_size)
  builders = {
    # As the trainer: the online probe only with `config.online_probe`.
    "train_step": lambda: compile_programs.train_program(
      config, mesh, num_classes if config.online_probe else 0
    ),
    "features": lambda: compile_programs.features_program(config, mesh, eval_batch),
    "linear_probe": lambda: compile_programs.linear_probe_program(
      config, mesh, num_classes, eval_batch
    ),
  }
  for name in programs:
    print(f"[compile] {spec.name}: lowering and compiling {name}", file=sys.stderr, flush=True)
    analysis = compile_programs.analyse(builders[name](), chip.hbm_bytes, chip.peak_bf16_flops)
    result["programs"][name] = analysis
  step = result["programs"].get("train_step", {})
  result["per_host"] = per_host(config, spec, hosts, step.get("ideal_step_seconds"))
  return result


def max_batch(config, topology: str, *, num_classes: int) -> dict:
  """The largest global batch (a multiple of the chips) whose training step fits one chip's HBM.

  Doubles from `config.batch_size` until a step does not fit, then bisects between the last that
  fit and the first that did not; every probe is one compile. Returns `{"max_batch", "tried":
  {batch: total_bytes}}` (`max_batch` 0 when even one example per chip does not fit).
  """
  spec = tpu_slices.parse_topology(topology)
  unit = spec.chips
  tried = {}

  def fits(k: int) -> bool:
    trial = config.copy_and_resolve_references()
    trial.batch_size = k * unit
    step = compile_slice(trial, topology, num_classes=num_classes, programs=("train_step",))
    tried[k * unit] = step["programs"]["train_step"]["total_bytes"]
    print(f"[compile] batch {k * unit}: {tried[k * unit] / 2**30:.2f} GiB", file=sys.stderr)
    return step["programs"]["train_step"]["fits"]

  k = max(int(config.batch_size) // unit, 1)
  if fits(k):
    lo, hi = k, None
    while hi is None:
      if fits(2 * lo):
        lo *= 2
      else:
        hi = 2 * lo
  else:
    lo, hi = 0, k
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
  return {"max_batch": lo * unit, "tried": dict(sorted(tried.items()))}


def _gib(n) -> str:
  return f"{n / 2**30:.2f} GiB"


def table(result: dict) -> str:
  """The result as text: the slice, then one block per program."""
  lines = [
    f"{result['topology']} ({result['accelerator_type']}): {result['chips']} chips x "
    f"{_gib(result['hbm_bytes'])} HBM, {result['hosts']} hosts, {result['devices']} devices "
    f"({result['device_kind']}); {result['model']}, {result['image_size']} px, global batch "
    f"{result['batch']}",
  ]
  host = result["per_host"]
  lines.append(
    f"per host: batch {host['batch_per_host']} ({host['batch_per_chip']} per chip)"
    + (
      f", needs {host['required_examples_per_second']:,.0f} examples/s at the ideal step time = "
      f"{host['required_cores']:.0f} cores at {host['input_rate_per_core']:.0f} examples/s/core"
      if "required_cores" in host
      else ""
    )
  )
  for name, p in result["programs"].items():
    sent = ", ".join(
      f"{k} {v['count']} ({_gib(v['bytes'])})" for k, v in p["collectives"].items() if v["count"]
    )
    lines += [
      f"{name}: total {_gib(p['total_bytes'])} per chip, headroom {_gib(p['headroom_bytes'])} "
      f"({p['headroom_percent']}%), {'fits' if p['fits'] else 'DOES NOT FIT'}",
      f"  params {_gib(p['params_bytes'])}, optimizer {_gib(p['opt_state_bytes'])}, other args "
      f"{_gib(p['other_args_bytes'])}, temporaries {_gib(p['temp_bytes'])}",
      f"  {p['flops'] / 1e12:.3f} TFLOP per chip"
      + (
        f", ideal step {p['ideal_step_seconds'] * 1e3:.1f} ms (lower bound)"
        if "ideal_step_seconds" in p
        else ""
      ),
      f"  collectives: {sent or 'none'}; host transfers: {p['host_callbacks'] or 'none'}",
      f"  lower {p['lower_seconds']:.0f} s, compile {p['compile_seconds']:.0f} s",
    ]
  if "max_batch" in result:
    lines.append(f"largest global batch that fits: {result['max_batch']['max_batch']}")
  return "\n".join(lines)


def _command(args: flags.FlagValues, argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = cli.loaded_config(args)
  spec = tpu_slices.parse_topology(args.topology)
  missing = tpu_slices.libtpu_missing()
  if missing:
    raise app.UsageError(missing)
  tpu_slices.compile_environment(spec.accelerator_type)
  import jax

  # Compile-only devices need no TPU backend; never try to open one.
  jax.config.update("jax_platforms", "cpu")
  num_classes = _num_classes(config, args.num_classes)
  if not args.force:
    from barlow_jax.benchmarks import compile_memory

    problem = compile_memory.check_host(config, spec)
    if problem:
      raise app.UsageError(problem)
  crash = tpu_slices.known_crash(spec, tpu_slices.libtpu_version())
  if crash and "train_step" in args.programs:
    print(f"warning: {crash}", file=sys.stderr, flush=True)
  result = compile_slice(config, args.topology, num_classes=num_classes, programs=args.programs)
  if args.max_batch:
    result["max_batch"] = max_batch(config, args.topology, num_classes=num_classes)
  print(table(result))
  if args.out:
    benchmarks.write_json(result, args.out)
    print(f"wrote {args.out}")
  else:
    print(json.dumps({k: v for k, v in result.items() if k != "programs"}, indent=1))
  return 0


COMMAND = cli.Command("python -m barlow_jax.benchmark compile", define_flags, _command, __doc__)


def main(argv: list[str]) -> int:
  """The command line in-process: `argv[0]` is "compile", then the flags."""
  return COMMAND(argv)


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  COMMAND.run()

"""Where the training step's time goes: a `jax.profiler` trace of a few steps, summed by op class.

    state = profile.capture(step, state, batch, log_dir, steps=3)   # writes the trace
    summary = profile.summarise(log_dir, compiled_hlo_text)        # {category: seconds, ...}
    print(profile.markdown(summary))

    python -m barlow_jax.benchmarks.profile --batch=256 --image_size=224 --dtype=bfloat16 \
        --out_dir=OUT/profile          # the suite's `profile` part; ResNet-50 + 8192-8192-8192

`capture` runs the jitted step under `jax.profiler.trace(..., create_perfetto_trace=True)`, which
writes `plugins/profile/<run>/perfetto_trace.json.gz` (Chrome trace-event JSON; no TensorBoard
profile plugin needed to read it) beside the `.xplane.pb` for TensorBoard / XProf. `summarise`
reads the device ops of the step's module from it (events with `hlo_module` / `hlo_op`
arguments: on a GPU the kernels, on the CPU the XLA thunks) and maps each HLO instruction to a
class through the compiled program's text (`compiled.as_text()`: each instruction's opcode, its
custom-call target and the jax name stack in its `op_name` metadata; `train_step` names its parts
with `jax.named_scope`):

- `convolutions`: convolutions (cuDNN custom calls on a GPU), forward and backward;
- `projector_matmuls`: matmuls under `projector/` or `predictor/` (forward and backward);
- `batchnorm_and_elementwise`: the network's other ops (BatchNorm, ReLU, residual adds, pooling);
- `loss`, `optimizer_update`, `input`, `probe`, `monitors`: the named parts;
- `copies_transposes_layout`: copies, transposes, layout changes and pure data-movement fusions;
- `collectives`, `other`;
- `idle`: the device's gaps: the span from the first op to the last, less the union of all ops.

Shares are of the span. On a GPU the ops of one step run one at a time on a stream, so busy
classes plus idle make the span; on the CPU XLA runs independent thunks on several threads at
once, and the busy classes can sum past 100%.
"""

import collections
import glob
import gzip
import json
import os
import re

from absl import app, flags

from barlow_jax import benchmarks, cli

CATEGORIES = (
  "convolutions",
  "projector_matmuls",
  "batchnorm_and_elementwise",
  "loss",
  "optimizer_update",
  "input",
  "probe",
  "monitors",
  "copies_transposes_layout",
  "collectives",
  "other",
)
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = .*? ([a-z][\w\-]*)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_TARGET = re.compile(r'custom_call_target="([^"]*)"')
_MOVES = frozenset(
  "copy transpose bitcast reshape convert reverse broadcast slice pad concatenate wrapped "
  "dynamic update fusion copy-start copy-done".split()
)
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")


_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+) \(.*\{\s*$")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")


def hlo_instructions(hlo_text: str) -> dict[str, tuple[str, str, str]]:
  """{instruction name: (opcode, op_name metadata, custom-call target)} of an HLO module's text.

  A fusion without metadata of its own takes the op_name of the first instruction of the
  computation it calls that has one.
  """
  out, calls, first_op_name = {}, {}, {}
  computation = ""
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      computation = header.group(1)
      continue
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    op_name, target, called = _OP_NAME.search(line), _TARGET.search(line), _CALLS.search(line)
    name = match.group(1)
    out[name] = (
      match.group(2),
      op_name.group(1) if op_name else "",
      target.group(1) if target else "",
    )
    if op_name and computation not in first_op_name:
      first_op_name[computation] = op_name.group(1)
    if called:
      calls[name] = called.group(1)
  for name, (opcode, op_name, target) in out.items():
    if not op_name and name in calls:
      out[name] = (opcode, first_op_name.get(calls[name], ""), target)
  return out


def _scope(op_name: str, name: str) -> bool:
  return re.search(rf"(^|[/(]){name}([/)]|$)", op_name) is not None


def classify(name: str, opcode: str, op_name: str, target: str) -> str:
  """The class of one HLO instruction (module docstring)."""
  if opcode.startswith(_COLLECTIVES):
    return "collectives"
  words = set(re.split(r"[_.\-\d]+", name)) - {""}
  if opcode in ("copy", "transpose", "bitcast", "reshape", "copy-start", "copy-done") or (
    not op_name and words <= _MOVES
  ):
    return "copies_transposes_layout"
  for scope, category in (
    ("loss", "loss"),
    ("optimizer", "optimizer_update"),
    ("input", "input"),
    ("probe", "probe"),
    ("monitors", "monitors"),
  ):
    if _scope(op_name, scope):
      return category
  conv = opcode == "convolution" or "conv" in target or op_name.endswith("conv_general_dilated")
  if conv:
    return "convolutions"
  if "/projector/" in op_name or "/predictor/" in op_name:
    is_dot = opcode == "dot" or "gemm" in target or "dot_general" in op_name
    return "projector_matmuls" if is_dot else "batchnorm_and_elementwise"
  if "BarlowTwins" in op_name:
    return "batchnorm_and_elementwise"
  return "other"


def trace_file(log_dir: str) -> str:
  """The newest `perfetto_trace.json.gz` under `log_dir` (FileNotFoundError if none)."""
  found = glob.glob(os.path.join(log_dir, "**", "perfetto_trace.json.gz"), recursive=True)
  if not found:
    raise FileNotFoundError(
      f"no perfetto_trace.json.gz under {log_dir}: capture the trace with "
      "jax.profiler.trace(log_dir, create_perfetto_trace=True) (profile.capture does)"
    )
  return max(found, key=os.path.getmtime)


def device_ops(trace_path: str, module_prefix: str = "jit_step") -> list[tuple[float, float, str]]:
  """(start us, duration us, HLO op) of every op of the step's module in a trace file, on one
  device (the lowest `device_ordinal` where the events carry one: every device runs the same
  program, and the span and its gaps are one device's)."""
  with gzip.open(trace_path, "rt") as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  ops = []
  for event in events:
    args = event.get("args") or {}
    if event.get("ph") != "X" or "hlo_op" not in args:
      continue
    if not str(args.get("hlo_module", "")).startswith(module_prefix):
      continue
    ordinal = str(args.get("device_ordinal", ""))
    ops.append((float(event["ts"]), float(event.get("dur", 0.0)), args["hlo_op"], ordinal))
  first = min((o for *_, o in ops), default="", key=lambda o: (len(o), o))
  return [(ts, dur, op) for ts, dur, op, ordinal in ops if ordinal == first]


def _busy(intervals) -> float:
  """Length of the union of [start, start + duration) intervals."""
  total, end = 0.0, float("-inf")
  for start, duration in sorted(intervals):
    stop = start + duration
    if stop > end:
      total += stop - max(start, end)
      end = stop
  return total


def summarise(log_dir: str, hlo_text: str, *, steps: int, module_prefix: str = "jit_step") -> dict:
  """Seconds per class of the traced steps (module docstring), per step, with shares of the span.

  Args:
    log_dir: the directory `capture` traced into.
    hlo_text: the compiled step's HLO text (`compiled.as_text()`), for op names and metadata.
    steps: how many steps the trace holds (the figures are divided by it).
    module_prefix: the jitted step's HLO module name (`jit_step` for `train_step.jit_train_step`).

  Returns:
    `span_seconds` (first op start to last op end, per step), `seconds` and `share` by class
    (`CATEGORIES` and "idle"), `top_ops`: the 15 longest instructions with their class, and
    `num_ops`. Raises FileNotFoundError without a trace, ValueError when it holds no op of the
    module.
  """
  ops = device_ops(trace_file(log_dir), module_prefix)
  if not ops:
    raise ValueError(f"the trace under {log_dir} holds no op of an HLO module {module_prefix}*")
  instructions = hlo_instructions(hlo_text)
  seconds = collections.Counter()
  per_op = collections.Counter()
  for _, duration, op in ops:
    opcode, op_name, target = instructions.get(op, ("", "", ""))
    category = classify(op, opcode, op_name, target)
    seconds[category] += duration
    per_op[(op, category)] += duration
  start = min(s for s, _, _ in ops)
  span = max(s + d for s, d, _ in ops) - start
  seconds["idle"] = span - _busy((s, d) for s, d, _ in ops)
  scale = 1e-6 / steps
  return {
    "steps": steps,
    "span_seconds": span * scale,
    "seconds": {k: seconds.get(k, 0.0) * scale for k in (*CATEGORIES, "idle")},
    "share": {k: seconds.get(k, 0.0) / span for k in (*CATEGORIES, "idle")},
    "top_ops": [
      {"op": op, "class": category, "seconds": t * scale}
      for (op, category), t in per_op.most_common(15)
    ],
    "num_ops": len(ops),
  }


def capture(step, state, batch, log_dir: str, *, steps: int = 3):
  """Runs `steps` calls of the jitted `step(state, batch, False)` under the profiler; returns the
  state. The step must be compiled and warm already (a compile inside the trace would show up)."""
  import jax

  with jax.profiler.trace(log_dir, create_perfetto_trace=True):
    metrics = None
    for _ in range(steps):
      state, metrics = step(state, batch, False)
    jax.block_until_ready((state.params, metrics))
  return state


def markdown(summary: dict, title: str = "Where the step's time goes") -> str:
  """The summary as a markdown table (class, ms per step, share of the span)."""
  lines = [
    f"{title} ({summary['steps']} traced steps, {summary['span_seconds'] * 1e3:.1f} ms per step "
    "from the first op to the last):",
    "",
    "| class | ms / step | share |",
    "|---|---|---|",
  ]
  for key in (*CATEGORIES, "idle"):
    value = summary["seconds"].get(key, 0.0)
    if value > 0:
      lines.append(f"| {key} | {value * 1e3:.2f} | {summary['share'][key]:.1%} |")
  lines += [
    "",
    "Longest ops: "
    + ", ".join(
      f"{o['op']} ({o['class']}, {o['seconds'] * 1e3:.2f} ms)" for o in summary["top_ops"][:5]
    ),
  ]
  return "\n".join(lines)


def profile_step(step, state, batch, log_dir: str, *, steps: int = 3, warmup: int = 2):
  """Compiles `step` (a `train_step.TracedStep`) once for (`state`, `batch`), warms it, traces
  `steps` calls and summarises them; returns (state, summary). One compilation: the compiled
  executable both runs the steps and gives the HLO text the ops are classified by."""
  import jax
  import numpy as np

  compiled = step.lower(state, batch).compile()
  off = np.bool_(False)
  for _ in range(warmup):
    state, metrics = compiled(state, batch, off)
  jax.block_until_ready(state.params)

  class _Compiled:
    def __call__(self, state, batch, monitor):
      return compiled(state, batch, np.bool_(monitor))

  state = capture(_Compiled(), state, batch, log_dir, steps=steps)
  return state, summarise(log_dir, compiled.as_text(), steps=steps)


def define_flags(flag_values: flags.FlagValues) -> None:
  """This command's flags (`barlow_jax.cli.Command`): the step benchmark's model flags."""
  benchmarks.define_shared_flags(
    flag_values,
    batch=16,
    image_size=64,
    dtype="float32",
    backbone="ResNet50",
    width=1.0,
    projector="8192-8192-8192",
    optimizer="lars",
    steps=(3, "traced steps"),
    warmup=2,
  )
  flags.DEFINE_string(
    "out_dir", "profile_out", "where the trace and profile.{json,md} go", flag_values=flag_values
  )


def run(args) -> dict:
  """Builds the step as `benchmark step` does (host augmentations, device batch), traces it,
  writes `out_dir`/profile.json and profile.md and the trace under `out_dir`/trace."""
  import tempfile

  import jax

  from barlow_jax import parallel, train_state, train_step
  from barlow_jax.benchmarks import step_jax

  with tempfile.TemporaryDirectory() as folder:
    config = step_jax.step_config(args, folder, on_device=False)
    config.num_train_examples = max(2 * args.batch, 64)
    mesh = parallel.create_mesh()
    state = train_state.create_train_state(config, jax.random.key(0), mesh=mesh, steps_per_epoch=2)
    step = train_step.jit_train_step(config, mesh, state)
    batch = step_jax._device_batch(args, mesh)  # noqa: SLF001 -- the step benchmark's batch.
    step_jax.progress("profile: compiling the step once, then tracing it")
    _, summary = profile_step(
      step, state, batch, os.path.join(args.out_dir, "trace"), steps=args.steps, warmup=args.warmup
    )
  summary |= {
    "backbone": args.backbone,
    "projector": args.projector,
    "batch": args.batch,
    "image_size": args.image_size,
    "dtype": args.dtype,
    "device_kind": jax.devices()[0].device_kind,
    "devices": jax.device_count(),
  }
  benchmarks.write_json(summary, os.path.join(args.out_dir, "profile.json"))
  title = (
    f"Where the step's time goes: {args.backbone} + {args.projector}, batch {args.batch}, "
    f"{args.image_size} px, {args.dtype}, {jax.device_count()} x {summary['device_kind']}"
  )
  with open(os.path.join(args.out_dir, "profile.md"), "w") as f:
    f.write(markdown(summary, title) + "\n")
  return summary


def _command(flag_values: flags.FlagValues, argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  summary = run(flag_values)
  print(markdown(summary))
  return 0


COMMAND = cli.Command("python -m barlow_jax.benchmarks.profile", define_flags, _command, __doc__)


def main(argv: list[str]) -> int:
  """The command line in-process: `argv[0]` is the program name, then the flags."""
  return COMMAND(argv)


if __name__ == "__main__":
  COMMAND.run()

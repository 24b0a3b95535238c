"""Cloud TPU slices as compile-only devices (libtpu, no TPU needed), and what XLA:TPU compiled.

`slice_devices("v5e:16x16")` gives the devices of that slice as `libtpu` describes them (through
`jax.experimental.topologies.get_topology_desc`): a `Mesh` over them lowers and compiles jitted
functions with XLA:TPU on any x86-64 Linux machine, and the compiled object's
`memory_analysis()` / `cost_analysis()` are the chip's. `CHIPS` is the one table of the chips'
HBM, dense bfloat16 peak and cores. `collectives(hlo_text)` and `host_transfers(hlo_text)` read
the optimised HLO: the communication and host round trips a step holds.
"""

import collections
import dataclasses
import math
import os
import re

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation, per chip.

  Attributes:
    hbm_bytes: high-bandwidth memory per chip.
    peak_bf16_flops: dense bfloat16 matmul peak, FLOP/s.
    cores: TensorCores per chip.
    megacore: the chip's cores run as one device (v4, v5p); libtpu's compile-only devices are
      TensorCores unless asked for `chip_config_name="megacore"`.
    topology_prefix: the generation's name in libtpu's topology strings.
    source: where the figures come from.
  """

  hbm_bytes: int
  peak_bf16_flops: float
  cores: int
  megacore: bool
  topology_prefix: str
  source: str


# The one table of chip figures (Cloud TPU system architecture pages, 2024-2025).
CHIPS = {
  "v4": Chip(32 * GiB, 275e12, 2, True, "v4", "https://cloud.google.com/tpu/docs/v4"),
  "v5e": Chip(16 * GiB, 197e12, 1, False, "v5e", "https://cloud.google.com/tpu/docs/v5e"),
  "v5p": Chip(95 * GiB, 459e12, 2, True, "v5p", "https://cloud.google.com/tpu/docs/v5p"),
  "v6e": Chip(32 * GiB, 918e12, 1, False, "v6e", "https://cloud.google.com/tpu/docs/v6e"),
}

COLLECTIVE_KINDS = (
  "all-reduce",
  "all-gather",
  "reduce-scatter",
  "all-to-all",
  "collective-permute",
)

INSTALL_HINT = (
  "libtpu (XLA:TPU's compiler) is needed to compile for TPU slices without a TPU: "
  "pip install 'jax[tpu]==<your jax version>' (e.g. pip install 'jax[tpu]==0.10.2', which pins "
  "libtpu 0.0.42.*), or pip install -e '.[test]'; libtpu is built for x86-64 Linux only."
)


@dataclasses.dataclass(frozen=True)
class Slice:
  """A parsed `--topology`: generation, chip grid, chips."""

  name: str
  generation: str
  dims: tuple[int, ...]

  @property
  def chip(self) -> Chip:
    return CHIPS[self.generation]

  @property
  def chips(self) -> int:
    return math.prod(self.dims)

  @property
  def accelerator_type(self) -> str:
    """The Cloud TPU accelerator type of the slice (v4 and v5p count TensorCores, v5e/v6e chips)."""
    count = self.chips * (self.chip.cores if self.chip.megacore else 1)
    return f"{'v5litepod' if self.generation == 'v5e' else self.generation}-{count}"


def parse_topology(name: str) -> Slice:
  """`"v5e:16x16"` -> `Slice`. Raises ValueError naming the accepted forms for anything else."""
  match = re.fullmatch(r"(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})", name.strip())
  if not match:
    raise ValueError(
      f"--topology={name!r} is not a TPU slice: use GENERATION:GRID with GENERATION one of "
      f"{sorted(CHIPS)} and GRID the chips per axis, e.g. v5e:16x16 (v5e-256), v6e:2x4 (v6e-8), "
      "v4:2x2x4 (v4-32), v5p:2x2x4 (v5p-32)."
    )
  dims = tuple(int(d) for d in match.group(2).split("x"))
  if min(dims) < 1:
    raise ValueError(f"--topology={name!r}: every axis needs at least one chip.")
  return Slice(name.strip(), match.group(1), dims)


# Compiles that crash libtpu on this machine kind (x86-64, 2 cores), with the versions measured:
# (generation, fewest chips, libtpu version) -> what happens (docs/scaling.md, "The reference
# run per slice"). On v6e, libtpu 0.0.42.1 segfaults in XLA:TPU's backend: the reference run's
# step on v6e:2x4 (8 and 256 per chip, after 4 and 37 minutes) and every training step on 64+
# chips (the tiny test config's too; there a stack overflow in a recursion,
# `MigrateInstructionUsers`, that neither `ulimit -s` nor libtpu's thread-stack flags avoid).
# The tiny config's step compiles on v6e:2x4 and v6e:4x4, and the features program everywhere;
# libtpu 0.0.52 compiles the reference step for v6e:2x4 and v6e:16x16, the tiny one for v6e:8x8.
KNOWN_CRASHES = {
  ("v6e", 1, "0.0.42.1"): (
    "libtpu 0.0.42.1 has crashed (SIGSEGV in XLA:TPU's backend) compiling training steps for "
    "v6e: the reference run's on v6e:2x4 (8 and 256 per chip) and every one measured on 64 "
    "chips or more (v6e:8x8, v6e:16x8, v6e:16x16); small configs compile on v6e:2x4 and "
    "v6e:4x4. libtpu 0.0.52 compiles them with jax 0.10.2: pip install libtpu==0.0.52 "
    "(docs/scaling.md)."
  ),
}


def known_crash(spec: Slice, libtpu_version: str) -> str:
  """What `KNOWN_CRASHES` says of compiling for `spec` with that libtpu, or ''."""
  for (generation, min_chips, version), text in KNOWN_CRASHES.items():
    if spec.generation == generation and spec.chips >= min_chips and libtpu_version == version:
      return text
  return ""


def libtpu_version() -> str:
  """The installed libtpu's version ('' when it is not installed)."""
  import importlib.metadata

  try:
    return importlib.metadata.version("libtpu")
  except importlib.metadata.PackageNotFoundError:
    return ""


def compile_environment(accelerator_type: str) -> None:
  """Sets the environment libtpu reads to compile without a TPU (before it first loads).

  No metadata server (`TPU_SKIP_MDS_QUERY`), the slice's accelerator type and this host as its
  worker (else libtpu warns that it could not determine them), and no single-process lock file
  (a compile-only use shares no TPU). Values already set are kept.
  """
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator_type)
  os.environ.setdefault("TPU_WORKER_ID", "0")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def libtpu_missing() -> str:
  """'' when libtpu can be imported, else why not and what to install."""
  import importlib.util
  import platform

  if importlib.util.find_spec("libtpu") is None:
    where = f"{platform.system()} {platform.machine()}"
    return f"libtpu is not installed ({where}). {INSTALL_HINT}"
  return ""


def slice_devices(spec: Slice) -> list:
  """The slice's compile-only devices: one per chip (megacore on v4 and v5p, as real slices run).

  Raises:
    RuntimeError: libtpu is missing (`INSTALL_HINT`) or rejects the topology.
  """
  missing = libtpu_missing()
  if missing:
    raise RuntimeError(missing)
  compile_environment(spec.accelerator_type)
  from jax.experimental import topologies

  kwargs = {"chip_config_name": "megacore"} if spec.chip.megacore else {}
  topology = f"{spec.chip.topology_prefix}:{'x'.join(map(str, spec.dims))}"
  try:
    devices = topologies.get_topology_desc(topology_name=topology, platform="tpu", **kwargs).devices
  except Exception as e:  # noqa: BLE001 -- libtpu's errors are JaxRuntimeError with its text.
    raise RuntimeError(f"libtpu rejected --topology={spec.name}: {e}") from e
  if len(devices) != spec.chips:
    raise RuntimeError(f"libtpu gave {len(devices)} devices for {spec.chips} chips of {spec.name}")
  return list(devices)


def hosts_of(devices) -> int:
  """Hosts (processes) of a slice: distinct `process_index` of its devices."""
  return len({d.process_index for d in devices})


# --------------------------------------------------------------------------------------------------
# The optimised HLO: collectives and host transfers. An instruction line of HLO text reads
# `%name = TYPE opcode(operands), ...`; TYPE is one shape `bf16[8,128]{1,0}` or a tuple of them.

_DTYPE_BYTES = {
  "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
  "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1,
}  # fmt: skip
_SHAPE = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s([a-z][a-z\-]*)\((.*)$")


def _bytes(shapes: str) -> int:
  total = 0
  for dtype, dims in _SHAPE.findall(shapes):
    if dtype in _DTYPE_BYTES:
      total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
  return total


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
  """Collectives of optimised HLO text, by kind: `{kind: {"count", "bytes"}}` (every kind).

  `count` is the number of collective instructions (an async pair `-start` / `-done` is one; an
  instruction inside a loop body counts once, whatever its trip count). `bytes` is the sum of
  their results' sizes on one device (XLA:TPU's text names operands without their shapes): the
  reduced arrays of an all-reduce, the gathered array of an all-gather, the shard a
  reduce-scatter leaves, the array an all-to-all or a permute moves.
  """
  out = {kind: {"count": 0, "bytes": 0} for kind in COLLECTIVE_KINDS}
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    opcode = match.group(2)
    kind = opcode.removesuffix("-start")
    if kind not in out:
      continue
    sizes = [_bytes(f"{dtype}[{dims}]") for dtype, dims in _SHAPE.findall(match.group(1))]
    # An async start's result is (operand, result, context...): the result is its largest part;
    # a combined all-reduce returns a tuple of reduced arrays: all of them count.
    size = (
      max(sizes, default=0) if opcode.endswith("-start") and kind != "all-reduce" else sum(sizes)
    )
    out[kind]["count"] += 1
    out[kind]["bytes"] += size
  return out


_HOST_OPS = ("infeed", "outfeed", "send", "recv", "send-done", "recv-done")


def host_transfers(hlo_text: str) -> list[str]:
  """Host round trips in optimised HLO: infeed/outfeed/send/recv and host callbacks by name."""
  found = collections.Counter()
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    opcode = match.group(2)
    if opcode in _HOST_OPS:
      found[opcode] += 1
    elif opcode == "custom-call":
      target = re.search(r'custom_call_target="([^"]+)"', line)
      if target and re.search(r"callback|host", target.group(1), re.IGNORECASE):
        found[target.group(1)] += 1
  return [f"{name} x{count}" for name, count in sorted(found.items())]

r"""Installs barlow_jax's requirements around a TensorFlow and jax that are already there (Colab).

    pip install --no-deps -e .              # the package alone (from a clone; or a wheel)
    python -m barlow_jax.tools.install_deps [--dry_run]

`pip install .` declares `tensorflow-cpu` (the host-side tf.data needs no accelerator build). On a
runtime that already has `tensorflow` (Colab, GPU images) that would lay a second distribution of
the same `tensorflow` package over it, and pip may swap a CUDA or TPU jax for the CPU build when
a requirement asks for another version. This installs the requirements barlow_jax declares
(its installed metadata, extras excluded) with two changes:

- `tensorflow-cpu` is asked for as `tensorflow` (same version range) when a `tensorflow`
  distribution is installed;
- every installed jax / jaxlib / jax CUDA or ROCm plugin / libtpu / TensorFlow distribution is
  pinned to its installed version (a pip constraints file), so pip either keeps it or stops with
  a conflict naming it (then upgrade that runtime package yourself, e.g. `pip install -U
  "jax[cuda12]"`); it never replaces it silently.

Standard library only: it runs before any dependency is there.
"""

import argparse
import importlib.metadata
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping

# Distributions a runtime provides and barlow_jax must not replace.
_KEEP = re.compile(
  r"^(jax|jaxlib|jax-(cuda|rocm)\d*-(plugin|pjrt)|libtpu(-nightly)?|tensorflow"
  r"|tensorflow-(cpu|gpu|tpu|intel|macos))$"
)


def distribution_name(requirement: str) -> str:
  """The normalised distribution name of a requirement string (PEP 503)."""
  match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
  if not match:
    raise ValueError(f"not a requirement: {requirement!r}")
  return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def plan(requirements: Iterable[str], installed: Mapping[str, str]) -> tuple[list[str], list[str]]:
  """(requirements to install, constraints) for barlow_jax's declared `requirements`.

  Args:
    requirements: PEP 508 strings as in the package metadata (`Requires-Dist`); those with an
      `extra ==` marker are left out.
    installed: {distribution name: version} of the environment.

  Returns:
    The requirements with `tensorflow-cpu` renamed `tensorflow` when `tensorflow` is installed,
    and `name==version` pins of the installed runtime distributions (`_KEEP`).
  """
  installed = {distribution_name(k): v for k, v in installed.items()}
  out = []
  for requirement in requirements:
    if re.search(r"extra\s*==", requirement):
      continue
    if distribution_name(requirement) == "tensorflow-cpu" and "tensorflow" in installed:
      requirement = re.sub(r"^\s*tensorflow[-_.]cpu", "tensorflow", requirement, flags=re.I)
    out.append(requirement)
  pins = [f"{name}=={version}" for name, version in sorted(installed.items()) if _KEEP.match(name)]
  return out, pins


def _installed() -> dict[str, str]:
  return {d.metadata["Name"]: d.version for d in importlib.metadata.distributions()}


def main(argv: list[str] | None = None) -> int:
  # argparse, not absl like every other command (barlow_jax.cli): this one runs before the
  # dependencies, absl among them, are installed.
  parser = argparse.ArgumentParser(
    prog="python -m barlow_jax.tools.install_deps", description=__doc__.split("\n\n")[0]
  )
  parser.add_argument("--dry_run", action="store_true", help="print the pip command only")
  args = parser.parse_args(argv)
  try:
    declared = importlib.metadata.requires("barlow_jax") or []
  except importlib.metadata.PackageNotFoundError:
    print(
      "barlow_jax is not installed: run `pip install --no-deps -e .` (or the wheel) first.",
      file=sys.stderr,
    )
    return 2
  requirements, pins = plan(declared, _installed())
  with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
    f.write("\n".join(pins) + "\n")
  command = [sys.executable, "-m", "pip", "install", "-q", "-c", f.name, *requirements]
  print("kept as installed:", ", ".join(pins) or "(none)")
  print(" ".join(command))
  if args.dry_run:
    return 0
  if any(p.startswith("tensorflow==") for p in pins):
    print(
      "pip's notice that barlow-jax requires tensorflow-cpu, which is not installed, is expected: "
      "the installed `tensorflow` distribution provides the same package."
    )
  return subprocess.call(command)


if __name__ == "__main__":
  sys.exit(main())

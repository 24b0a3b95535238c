"""What a study leaves in each run's workdir, and reading and writing it (local paths or gs://).

A run of a study writes, besides what `barlow_jax.main` writes (checkpoints, `metrics.jsonl`,
`results.json`, ...): `experiment.json` (what the runner launched: study, run, scale, command)
and `run.log` (the output of its processes). A scale that evaluates as its own job writes that
job's `results.json` under `linear_eval/`.
"""

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from typing import IO, Any

from etils import epath

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_LOG = "run.log"
EXPERIMENT_FILE = "experiment.json"  # What the runner launched in a workdir (study, overrides).
EVAL_SUBDIR = "linear_eval"  # Standalone evaluation of a run (scales with `eval_config`).

# A Python exception as the traceback's last line prints it: "NonFiniteLossError: Non-finite...".
_ERROR_LINE = re.compile(r"^([\w.]+(?:Error|Exception)): (.*)$")


def join(root: str, *parts: str) -> str:
  """`root/parts...`: an absolute local path, or a URL (gs://...) joined with "/"."""
  if "://" in root:  # gs://... stays a URL.
    return "/".join([root.rstrip("/"), *parts])
  return os.path.join(os.path.abspath(root), *parts)


def subdirs(directory: str) -> list[str]:
  """The names of the sub-directories of `directory`, sorted."""
  # Object stores list sub-directories as "name/".
  return sorted(p.name.rstrip("/") for p in epath.Path(directory).iterdir() if p.is_dir())


def display_path(path: str | None) -> str | None:
  """`path` relative to the repository when it is inside it (the committed JSON has no home
  directories), else unchanged."""
  if path and "://" not in path and os.path.abspath(path).startswith(REPO_ROOT + os.sep):
    return os.path.relpath(path, REPO_ROOT)
  return path


def results_path(workdir: str) -> str | None:
  """WORKDIR/results.json (end-of-training table) or WORKDIR/linear_eval/results.json, or None
  when the run has neither."""
  for path in (join(workdir, "results.json"), join(workdir, EVAL_SUBDIR, "results.json")):
    if epath.Path(path).exists():
      return path
  return None


def read_json(path: str) -> Any:
  """The JSON at `path` (local or gs://), or None when it is missing or not JSON."""
  text = read_text(path)
  try:
    return None if text is None else json.loads(text)
  except ValueError:
    return None


def read_text(path: str) -> str | None:
  """The text at `path` (undecodable bytes replaced), or None when it does not exist."""
  if not epath.Path(path).exists():
    return None
  return epath.Path(path).read_bytes().decode(errors="replace")


def write_json(path: str, value: Any) -> None:
  """Writes `value` to `path` as indented JSON with sorted keys."""
  epath.Path(path).write_text(json.dumps(value, indent=2, sort_keys=True))


def read_error(log_path: str) -> str | None:
  """The last exception line (`SomeError: message`, at most 300 characters) of a run's log, or
  None when the log is missing or has none: why a run without results failed."""
  error = None
  for line in (read_text(log_path) or "").splitlines():
    match = _ERROR_LINE.match(line.strip())
    if match:
      error = f"{match.group(1)}: {match.group(2)}"[:300]
  return error


@contextlib.contextmanager
def run_log(workdir: str) -> Iterator[IO[bytes]]:
  """WORKDIR/run.log opened for appending the subprocesses' output.

  A local log grows as the run goes (`tail -f` it); an object store cannot append, so a bucket's
  log is written to a local temporary file and uploaded (after the old log) when the run ends.
  """
  path = join(workdir, RUN_LOG)
  if "://" not in path:
    with open(path, "ab") as log:
      yield log
    return
  old = read_text(path) or ""
  with tempfile.TemporaryFile() as log:
    try:
      yield log
    finally:
      log.seek(0)
      epath.Path(path).write_bytes(old.encode() + log.read())

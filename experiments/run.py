r"""Runs one of the paper's studies at a scale, then tables and plots what each run measured.

    python -m experiments.run loss_ablation --scale=local
    python -m experiments.run projector_width --scale=cifar --workdir_root=gs://B/experiments \
        --dry_run    # one `python -m barlow_jax.main ...` line per run: one job each on a pod
    python -m experiments.run lambda --scale=local --only=lambda_0.002,lambda_0.02
    python -m experiments.run loss_ablation --scale=local --collect_only   # tables from workdirs

Each run of STUDY (`experiments/studies.py`) is the scale's config file with the scale's common
overrides, then the run's own, applied to the locked config: a key that does not exist is an error
naming it, before anything trains (`experiments.plan`). Runs go one after another, each in its own
process, as `python -m barlow_jax.main --config=FILE --workdir=ROOT/STUDY/RUN --config.KEY=VALUE
...`, with its log in ROOT/STUDY/RUN/run.log; a finished run is skipped and a run with the config
of a finished one reuses its results (`experiments.runner`).

Then the results of every run (results.json of the end-of-training evaluation; final loss and
collapse monitors from the run's metrics.jsonl: `experiments.collect`) go to
`RESULTS_DIR/STUDY.json`, a Markdown table `RESULTS_DIR/STUDY.md` (ours beside the paper's
ImageNet numbers) and a plot `RESULTS_DIR/STUDY.png` (`experiments.report`).
Hand-written observations in `RESULTS_DIR/STUDY.notes.md`, if present, are appended to the table.

The modules' public names are re-exported here (`experiments.run.plan`, `.collect`, ...).
"""

import os
import sys
from collections.abc import Sequence

from absl import app, flags

from barlow_jax import cli
from experiments import studies
from experiments.collect import collect, jsonable, last_scalars, parse_log, run_metrics
from experiments.plan import (
  Planned,
  apply_overrides,
  command_line,
  config_key,
  eval_command_line,
  format_value,
  job_line,
  load_config,
  plan,
)
from experiments.report import (
  DEFAULT_RESULTS_DIR,
  default_results_dir,
  results_markdown,
  write_report,
)
from experiments.runner import run_study
from experiments.workdirs import EVAL_SUBDIR, EXPERIMENT_FILE, REPO_ROOT, RUN_LOG

__all__ = [
  "DEFAULT_RESULTS_DIR",
  "EVAL_SUBDIR",
  "EXPERIMENT_FILE",
  "REPO_ROOT",
  "RUN_LOG",
  "Planned",
  "apply_overrides",
  "collect",
  "command_line",
  "config_key",
  "default_results_dir",
  "eval_command_line",
  "format_value",
  "job_line",
  "jsonable",
  "last_scalars",
  "load_config",
  "main",
  "parse_log",
  "plan",
  "results_markdown",
  "run_metrics",
  "run_study",
  "write_report",
]


def define_flags(flag_values: flags.FlagValues) -> None:
  """The command line's flags (`barlow_jax.cli.Command`); STUDY is the positional argument."""
  fv = {"flag_values": flag_values}
  flags.DEFINE_enum("scale", "local", sorted(studies.SCALES), "the scale of the runs", **fv)
  flags.DEFINE_string(
    "workdir_root", "", "default: workdirs/experiments/SCALE (one tree per scale)", **fv
  )
  flags.DEFINE_string("only", "", "comma-separated run names (default: all)", **fv)
  flags.DEFINE_bool("dry_run", False, "print the command lines only", **fv)
  flags.DEFINE_bool("collect_only", False, "train nothing; table what the workdirs hold", **fv)
  flags.DEFINE_string(
    "results_dir", "", "default: experiments/results (local), else .../SCALE", **fv
  )


def _command(args: flags.FlagValues, argv: list[str]) -> int:
  if len(argv) != 2:
    raise app.UsageError(
      f"give one STUDY ({', '.join(sorted(studies.STUDIES))}), got {argv[1:] or 'none'}"
    )
  study = argv[1]
  workdir_root = args.workdir_root or os.path.join("workdirs", "experiments", args.scale)
  results_dir = args.results_dir or default_results_dir(args.scale)
  only = [n for n in args.only.split(",") if n]
  try:
    planned = plan(study, args.scale, workdir_root=workdir_root, only=only)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.dry_run:
    for p in planned:
      print(job_line(args.scale, p))
    return 0
  outcomes = []
  if not args.collect_only:
    outcomes = run_study(study, args.scale, workdir_root=workdir_root, only=only)
  # The report covers the whole study (runs not done yet show as "not run").
  collected = collect(study, args.scale, workdir_root=workdir_root)
  paths = write_report(collected, results_dir)
  print(f"Wrote {paths['md']}, {paths['png']}, {paths['json']}.")
  failed = [o["name"] for o in outcomes if o["status"] == "failed"]
  if failed:
    print(f"{len(failed)} run(s) failed: {', '.join(failed)} (see the table and their run.log).")
  return 0


COMMAND = cli.Command("python -m experiments.run", define_flags, _command, __doc__)


def main(argv: Sequence[str] | None = None) -> int:
  """The command line in-process: `argv` without the program name (default `sys.argv[1:]`)."""
  return COMMAND(["", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
  COMMAND.run()

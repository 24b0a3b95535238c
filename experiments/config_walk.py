"""Where the run's config travels: the functions that receive it, from `train_and_evaluate`.

    python experiments/config_walk.py [--config=tests/configs_tiny.py] [--out=FILE.json]

Runs the tiny pretraining config (14 steps, no final evaluation) under `sys.setprofile` and records
every call of a `barlow_jax` function that receives the config or one of its sub-dicts as an
argument, positional or keyword-only (a "stop"). Prints, as one JSON object: the distinct stops
(module.function), the distinct modules, and the climbs back: calls into a module that already
has a frame further up the same call chain after another module's frame (A -> B -> A), i.e. the
config handed back into a module it has left. Few modules and no climb back mean the config is
read where it is needed and derived once (the result:
experiments/results/house/config_walk.json; `tests/test_config_walk.py` keeps it so). The count
depends on the code path a config takes, so compare it on the same config only.
"""

import argparse
import collections
import importlib.util
import json
import os
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _config_ids(config) -> set[int]:
  """Ids of the config and every ConfigDict inside it."""
  import ml_collections

  ids, todo = set(), [config]
  while todo:
    node = todo.pop()
    ids.add(id(node))
    todo += [v for v in node.values() if isinstance(v, ml_collections.ConfigDict)]
  return ids


def walk(config, workdir: str | None = None) -> dict:
  """The walk of `config` through `train.train_and_evaluate(config, workdir)` (default: a new
  temporary workdir; a finished run's workdir walks a rerun: nothing trains, nothing compiles
  the step)."""
  from barlow_jax import train

  ids = _config_ids(config)
  stops = collections.Counter()
  climbs = collections.Counter()

  def project_module(frame) -> str | None:
    name = frame.f_globals.get("__name__", "")
    return name if name.startswith("barlow_jax") else None

  def profile(frame, event, arg):
    if event != "call":
      return
    module = project_module(frame)
    if module is None:
      return
    code = frame.f_code
    # Positional and keyword-only parameters alike (`f(x, *, config)` receives it too).
    names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    args = [frame.f_locals.get(n) for n in names]
    if not any(id(a) in ids for a in args):
      return
    stops[f"{module}.{code.co_name}"] += 1
    # The project's modules up the call chain, outermost last, consecutive repeats merged.
    chain, up = [], frame.f_back
    while up is not None:
      m = project_module(up)
      if m and (not chain or chain[-1] != m):
        chain.append(m)
      up = up.f_back
    if chain and chain[0] != module and module in chain[1:]:
      climbs[f"{chain[0]} -> {module}.{code.co_name}"] += 1

  with tempfile.TemporaryDirectory() as new_workdir:
    sys.setprofile(profile)
    try:
      train.train_and_evaluate(config, workdir or new_workdir)
    finally:
      sys.setprofile(None)
  modules = sorted({s.rsplit(".", 1)[0] for s in stops})
  return {
    "stops": len(stops),
    "modules": len(modules),
    "climbs_back": len(climbs),
    "module_list": modules,
    "stop_list": sorted(stops),
    "climb_list": sorted(climbs),
  }


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--config", default="tests/configs_tiny.py")
  p.add_argument("--out", default="")
  a = p.parse_args()
  spec = importlib.util.spec_from_file_location("walk_config", a.config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  result = walk(module.get_config())
  text = json.dumps(result, indent=1)
  if a.out:
    with open(a.out, "w") as f:
      f.write(text + "\n")
  print(text)


if __name__ == "__main__":
  main()

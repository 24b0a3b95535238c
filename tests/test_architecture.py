"""The allowed imports of docs/architecture.md, checked on the source (no module is imported).

Every `import` / `from ... import` in every module counts, function-level ones included: a lazy
import is still a dependency.
"""

import ast
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "barlow_jax"
PACKAGES = ("barlow_jax.data", "barlow_jax.evaluation", "barlow_jax.benchmarks", "barlow_jax.tools")
# Entry points: command lines (and their shared flag helpers). Library code never imports them.
ENTRY_POINTS = {
  "barlow_jax.main",
  "barlow_jax.evaluate",
  "barlow_jax.convert",
  "barlow_jax.launch",
  "barlow_jax.benchmark",
  "barlow_jax.cli",
}
# Old import paths kept for users' code: deprecation tables, nothing in the project imports them.
COMPATIBILITY = {
  "barlow_jax.input_pipeline",
  "barlow_jax.augment",
  "barlow_jax.datasets",
  "barlow_jax.blur",
  "barlow_jax.device_augment",
  "barlow_jax.evaluation.metrics",
  "barlow_jax.knn_monitor",
  "barlow_jax.preemption",
  "barlow_jax.train_progress",
  "barlow_jax.distributed",
  "barlow_jax.benchmarks.input_peer",
}
# Where the old top-level modules' tables live; each is imported as barlow_jax.NAME.
OLD_MODULES = ROOT / "_deprecations"


def module_name(path: pathlib.Path) -> str:
  if path.parent == OLD_MODULES and path.name != "__init__.py":
    return f"barlow_jax.{path.stem}"
  parts = path.relative_to(ROOT.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: pathlib.Path) -> set[str]:
  """Top-level distributions and barlow_jax modules `path` imports (`from P import m` -> P.m
  where P is a package, so a module imported from its package counts as that module)."""
  name = module_name(path)
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package.split(".")
        base = base[: len(base) - node.level + 1]
        module = ".".join(base + ([node.module] if node.module else []))
      else:
        module = node.module
      out.add(module)
      if module == "barlow_jax" or module in PACKAGES:
        out |= {f"{module}.{a.name}" for a in node.names}
  return out


MODULES = {module_name(p): imports(p) for p in sorted(ROOT.rglob("*.py"))}


def project_imports(module: str) -> set[str]:
  return {m for m in MODULES[module] if m.startswith("barlow_jax.") and m in MODULES}


def distributions(module: str) -> set[str]:
  return {m.split(".")[0] for m in MODULES[module]} - {"barlow_jax"} - set(sys.stdlib_module_names)


def test_the_walk_sees_the_project():
  assert {"barlow_jax.losses", "barlow_jax.models", "barlow_jax.data.pretrain"} <= set(MODULES)
  assert COMPATIBILITY <= set(MODULES)  # The old modules under their old names.
  assert "barlow_jax.losses" in project_imports("barlow_jax.monitors")


LOSS_MODULES = ("barlow_jax.losses", "barlow_jax.loss_kernels")


@pytest.mark.parametrize("module", LOSS_MODULES)
def test_losses_imports_only_jax(module):
  # The loss is split over LOSS_MODULES; together they stay a pure-jax unit.
  assert distributions(module) <= {"jax"}
  assert project_imports(module) <= set(LOSS_MODULES) - {module}


MODEL_MODULES = ("barlow_jax.models", "barlow_jax.resnet")


@pytest.mark.parametrize("module", MODEL_MODULES)
def test_models_only_define_modules(module):
  assert distributions(module) <= {"jax", "flax"}
  assert project_imports(module) <= set(MODEL_MODULES) - {module}


@pytest.mark.parametrize(
  "module", sorted(m for m in MODULES if m.startswith("barlow_jax.data") and m not in COMPATIBILITY)
)
def test_the_data_side_knows_no_network(module):
  outside = {m for m in project_imports(module) if not m.startswith("barlow_jax.data")}
  assert outside == set(), f"{module} imports {outside}"
  assert not distributions(module) & {"flax", "optax", "orbax"}, module


@pytest.mark.parametrize(
  "module", sorted(m for m in MODULES if m.startswith("barlow_jax.evaluation"))
)
def test_evaluation_does_not_reach_into_training(module):
  training = {m for m in project_imports(module) if m.split(".")[1].startswith(("train", "finish"))}
  assert training == set(), f"{module} imports {training}"


@pytest.mark.parametrize(
  "module",
  sorted(
    m
    for m in MODULES
    if m not in ENTRY_POINTS | COMPATIBILITY and not m.startswith("barlow_jax.benchmarks")
  ),
)
def test_library_code_imports_no_entry_point_or_old_path(module):
  bad = project_imports(module) & (ENTRY_POINTS | COMPATIBILITY)
  if module.startswith("barlow_jax.tools."):
    bad -= {"barlow_jax.cli"}  # A tool is an entry point itself.
  assert bad == set(), f"{module} imports {bad}: import the module that owns the code"


def test_config_imports_only_leaf_modules():
  # The config may take a constant from a module that itself imports nothing of the project.
  for dep in project_imports("barlow_jax.config"):
    assert project_imports(dep) == set(), dep


def _import_cycle() -> list[str]:
  """One cycle of the project's import graph (lazy imports included), or [] when it has none."""
  state, stack = {}, []

  def visit(module):
    state[module] = "open"
    stack.append(module)
    for dep in sorted(project_imports(module)):
      if state.get(dep) == "open":
        return stack[stack.index(dep) :] + [dep]
      if dep not in state and (cycle := visit(dep)):
        return cycle
    stack.pop()
    state[module] = "done"
    return []

  for module in sorted(MODULES):
    if module not in state and (cycle := visit(module)):
      return cycle
  return []


def test_no_import_cycle():
  # A circle (e.g. a command and its helper importing each other lazily) means a shared piece
  # sits in the wrong module: move it to the module that owns it.
  cycle = _import_cycle()
  assert cycle == [], " -> ".join(cycle)

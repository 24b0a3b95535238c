"""Old import paths: each old name warns DeprecationWarning naming its new home and returns the
new home's object; pytest (pyproject.toml) turns the project's own DeprecationWarnings into errors.

`OLD_PATHS` lists, independently of the modules' tables, the names each old path had and the
modules that own them now.
"""

import ast
import importlib
import importlib.util
import json
import pathlib
import warnings

import pytest

from barlow_jax import _deprecations, data

OLD_PATHS = {
  "barlow_jax.input_pipeline": (
    "barlow_jax.data",
    "IN_MEMORY_SPLITS check_batch_size shard_bounds num_classes num_train_examples "
    "steps_per_epoch two_view_fn normalize_views options create_pretrain_iterator eval_resize "
    "create_eval_iterator load_labelled_arrays",
  ),
  "barlow_jax.augment": (
    "barlow_jax.data.augment barlow_jax.data.crop barlow_jax.data.colour",
    "LUMA NUM_CROP_ATTEMPTS APPLIED_KEYS example_seed to_uint8 to_float crop_window "
    "RESIZE_METHODS check_resize_method resize_image random_resized_crop "
    "decode_and_random_resized_crop decode_image_uint8 decode_whole decode_image flip_left_right "
    "to_grayscale adjust_brightness adjust_contrast adjust_saturation adjust_hue color_jitter "
    "blur_radius gaussian_blur solarize permute_channels normalize maybe_flip augment_cropped "
    "crop_seed crop_view augment_view eval_resize_crop",
  ),
  "barlow_jax.datasets": (
    "barlow_jax.data.digits",
    "NUM_TRAIN_DIGITS NUM_TEST_DIGITS CLUTTERED_SIZE CLUTTERED_RENDERS DIGITS_SIZE "
    "cluttered_digits digits IN_MEMORY",
  ),
  "barlow_jax.blur": (
    "barlow_jax.data.blur",
    "box_radius kernel_radius pil_gaussian_kernel blur_batch blur_image",
  ),
  "barlow_jax.device_augment": (
    "barlow_jax.data.device_augment barlow_jax.data.device_colour",
    "LUMA APPLIED_KEYS JITTER_OPS validate_config to_grayscale adjust_brightness adjust_contrast "
    "adjust_saturation rgb_to_hsv hsv_to_rgb adjust_hue blur_box_radius blur_half_width "
    "blur_radius pil_gaussian_kernel gaussian_blur solarize normalize to_unit example_keys "
    "sample_params color_jitter augment_image augment_views augment_batch prepare_views",
  ),
  "barlow_jax.train": (
    "barlow_jax.train_step barlow_jax.train_state barlow_jax.parallel barlow_jax.checkpointing "
    "barlow_jax.monitors",
    "HEATMAP_SIZE TrainState create_train_state restore_state backbone_of export_backbone "
    "load_exported_backbone train_step effective_rank jit_train_step create_mesh state_shardings "
    "batch_sharding global_batch device_prefetch prepare_workdir",
  ),
  "barlow_jax.evaluate": (
    "barlow_jax.evaluation.baselines barlow_jax.evaluation.features "
    "barlow_jax.evaluation.final_table barlow_jax.evaluation.finetune barlow_jax.evaluation.knn "
    "barlow_jax.evaluation.linear_probe barlow_jax.evaluation.modes barlow_jax.models "
    "barlow_jax.data.pretrain",
    "STANDARDISED_PIXELS Classifier LinearProbe array_batches backbone_variables "
    "classifier_accuracy create_backbone crop_flip_config extract_features finetune init_backbone "
    "knn_accuracy knn_evaluation linear_evaluation linear_probe_accuracy load_backbone "
    "probe_kwargs_from_config random_batches random_crop_flip recalibrate_batch_stats "
    "reference_linear_probe results_markdown run_final_evaluation select_subset "
    "semisup_evaluation topk_accuracy train_linear_probe write_results",
  ),
  "barlow_jax.convert": (
    "barlow_jax.checkpointing",
    "MODEL_CONFIG_FILE full_model_config load_backbone save_backbone",
  ),
}


def _new_home(homes: list, name: str):
  """The module of `homes` that defines `name` (not one that imports it)."""
  for home in homes:
    if name in vars(home):
      if getattr(vars(home)[name], "__module__", home.__name__) == home.__name__:
        return home
  return homes[0]  # barlow_jax.data: its names load on first use.


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_each_old_name_warns_naming_its_home_and_returns_the_homes_object(old):
  homes, names = OLD_PATHS[old]
  old_module = importlib.import_module(old)
  homes = [importlib.import_module(h) for h in homes.split()]
  for name in names.split():
    home = _new_home(homes, name)
    with pytest.warns(DeprecationWarning, match=rf"^{old}\.{name} is deprecated .* 0\.3") as record:
      value = getattr(old_module, name)
    assert value is getattr(home, name), f"{old}.{name}"
    assert home.__name__ in str(record[0].message), f"{old}.{name}: {record[0].message}"
    assert record[0].filename == __file__  # Points at the line that used the old name.


def test_validate_config_warns_naming_its_new_name():
  from barlow_jax import train, train_setup

  with pytest.warns(DeprecationWarning, match=r"train_setup\.validate_pretraining"):
    assert train.validate_config is train_setup.validate_pretraining


def test_from_import_of_an_old_name_warns_too():
  with pytest.warns(DeprecationWarning, match="barlow_jax.data.colour.solarize"):
    from barlow_jax.augment import solarize
  from barlow_jax.data import colour

  assert solarize is colour.solarize


def test_a_name_no_table_holds_is_an_attribute_error():
  from barlow_jax import augment, train

  with pytest.raises(AttributeError, match="barlow_jax.augment.*no_such_name"):
    augment.no_such_name  # noqa: B018
  assert train.train_and_evaluate  # The command's own names stay plain attributes.


def test_pytest_turns_the_projects_deprecation_warnings_into_errors():
  # pyproject.toml's filterwarnings: a new use of an old path fails the suite.
  from barlow_jax import evaluate

  with pytest.raises(DeprecationWarning, match="barlow_jax.evaluate.knn_accuracy"):
    evaluate.knn_accuracy  # noqa: B018
  # Other packages' DeprecationWarnings stay ignored.
  warnings.warn("some library's deprecation", DeprecationWarning, stacklevel=1)


def test_the_message_names_old_and_new():
  message = _deprecations.deprecation_message("barlow_jax.train.create_mesh", "x.y.create_mesh")
  assert message.startswith("barlow_jax.train.create_mesh is deprecated")
  assert "use x.y.create_mesh instead" in message and _deprecations.REMOVED_IN in message


def test_a_function_replaced_in_the_package_is_what_the_old_path_gives(monkeypatch):
  from barlow_jax import input_pipeline

  def fake(config, **kwargs):
    del config, kwargs
    return iter(())

  monkeypatch.setattr(data, "create_pretrain_iterator", fake)
  with pytest.warns(DeprecationWarning, match="barlow_jax.data.create_pretrain_iterator"):
    assert input_pipeline.create_pretrain_iterator is fake


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_every_table_entry_resolves(old):
  table = importlib.import_module(old)._DEPRECATED
  assert set(OLD_PATHS[old][1].split()) - {"validate_config"} <= set(table)
  for name, new in table.items():
    assert _deprecations.resolve(new) is not None, f"{old}.{name} -> {new}"


_REPO = pathlib.Path(__file__).resolve().parents[1]


def _tables() -> dict[str, set[str]]:
  """Old module -> its deprecated names, read from the source (`_DEPRECATED = {...}`)."""
  out = {}
  for old in OLD_PATHS:
    # An old module's table sits in barlow_jax/_deprecations/ (where the import system finds it).
    path = pathlib.Path(importlib.util.find_spec(old).origin)
    for node in ast.parse(path.read_text()).body:
      if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_DEPRECATED":
        out[old] = set(ast.literal_eval(node.value))
  return out


def old_uses(source: str, tables) -> list[str]:
  """`from OLD import name` and `alias.name` uses in `source` of the names `tables[OLD]` holds."""
  tree = ast.parse(source)
  alias, uses = {}, []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
      for a in node.names:
        if f"{node.module}.{a.name}" in tables:
          alias[a.asname or a.name] = f"{node.module}.{a.name}"
        elif node.module in tables and a.name in tables[node.module]:
          uses.append(f"line {node.lineno}: from {node.module} import {a.name}")
    elif isinstance(node, ast.Import):
      for a in node.names:
        if a.name in tables and a.asname:
          alias[a.asname] = a.name
  for node in ast.walk(tree):
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
      old = alias.get(node.value.id)
      if old and node.attr in tables[old]:
        uses.append(f"line {node.lineno}: {old}.{node.attr}")
  return uses


def project_sources(skip: str = __file__):
  """(path, Python source) of every module, test, script, config and the notebook's code cells,
  but `skip` (the test that uses old names on purpose)."""
  for folder in ("barlow_jax", "tests", "experiments", "configs"):
    for path in sorted((_REPO / folder).rglob("*.py")):
      if path != pathlib.Path(skip).resolve():
        yield path, path.read_text()
  notebook = _REPO / "experiments" / "colab_demo.ipynb"
  cells = json.loads(notebook.read_text())["cells"]
  code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
  lines = [ln for c in code for ln in c.splitlines() if not ln.lstrip().startswith(("!", "%"))]
  yield notebook, "\n".join(lines)


def test_the_project_uses_no_old_name_anywhere():
  # Also where pytest's error filter cannot see: slow tests, subprocess scripts, the notebook.
  tables = _tables()
  assert set(tables) == set(OLD_PATHS) and all(tables.values())
  assert old_uses("from barlow_jax import train\ntrain.create_mesh()", tables)
  found = {str(p.relative_to(_REPO)): u for p, s in project_sources() if (u := old_uses(s, tables))}
  assert not found, f"old import paths in use (import the new home instead): {found}"

"""The package's layout: every module sits in a subpackage, and subpackages import only downwards.

Read from the source (ast, nothing imported), so a violation fails here before it can hide behind
an import that happens to work.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import gradprom_jax

PACKAGE_DIR = Path(gradprom_jax.__file__).resolve().parent
REPO = Path(__file__).resolve().parents[1]

# Which subpackages each may import (its own is always allowed). Lowest layer first: the models, the
# data and the task kinds (each kind's loss, metrics, targets and drawing) stand alone, the maths
# builds on the models and the kinds, the methods (each a combiner of core's with its config group)
# on the maths, configuration validates against those, training drives them all, and inference sits
# on top. The experiment tooling is no part of the package: it lives in experiments/tools, above
# all of it.
ALLOWED_IMPORTS = {
    "models": set(),
    "data": set(),
    "tasks": set(),
    "core": {"models", "tasks"},
    "methods": {"core"},
    "configuration": {"core", "models", "data", "methods", "tasks"},
    "training": {"core", "models", "data", "methods", "configuration", "tasks"},
    "inference": {"core", "models", "data", "methods", "configuration", "training", "tasks"},
}
# Modules a subpackage may not import although their subpackage is allowed.
FORBIDDEN_MODULES = {
    # Applying a trained run needs the run's state and checkpoints, not the loop that trained it.
    "inference": {"gradprom_jax.training.train", "gradprom_jax.training.main"},
}
# gradprom_jax/__init__.py is the public API: it re-exports the combiners, from core, and the
# combiners by name, from methods.
ROOT_IMPORTS = {"core", "methods"}


def _imported_modules(tree: ast.Module, module: str, is_package: bool, root: Path) -> set[str]:
  """Every gradprom_jax module that ``module``'s source imports, anywhere in it: ``from P import
  x`` counts as importing ``P.x`` where ``P`` is a package (``gradprom_jax.x`` for a name the root
  re-exports), as importing ``P`` otherwise; relative imports are resolved. ``root``: the directory
  that holds gradprom_jax/."""
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = module.split(".")[:len(module.split(".")) - node.level + is_package]
        base = ".".join(parts + ([node.module] if node.module else []))
      if (root / base.replace(".", "/") / "__init__.py").exists():
        found |= {f"{base}.{alias.name}" for alias in node.names}
      else:
        found.add(base)
  return {name for name in found if name == "gradprom_jax" or name.startswith("gradprom_jax.")}


def layout_violations(package_dir: Path, allowed=None, forbidden=None,
                      root_imports=None) -> list[str]:
  """``"importer -> imported"`` for every import against the tables, in the package at
  ``package_dir`` (a directory named gradprom_jax)."""
  allowed = ALLOWED_IMPORTS if allowed is None else allowed
  forbidden = FORBIDDEN_MODULES if forbidden is None else forbidden
  root_imports = ROOT_IMPORTS if root_imports is None else root_imports
  subpackages = {p.name for p in package_dir.iterdir() if (p / "__init__.py").exists()}
  violations = [f"{name}: a subpackage missing from the table" for name in sorted(subpackages)
                if name not in allowed]
  for path in sorted(package_dir.rglob("*.py")):
    relative = path.relative_to(package_dir.parent).with_suffix("")
    is_package = relative.name == "__init__"
    module = ".".join(relative.parts[:-1] if is_package else relative.parts)
    importer = relative.parts[1] if len(relative.parts) > 2 else None   # None: the root.
    if importer is None and not is_package:
      violations.append(f"{module}: a module outside every subpackage")
      continue
    may_import = root_imports if importer is None else allowed.get(importer, set())
    tree = ast.parse(path.read_text())
    for imported in sorted(_imported_modules(tree, module, is_package, package_dir.parent)):
      parts = imported.split(".")
      target = parts[1] if len(parts) > 1 and parts[1] in subpackages else "core"   # root names
      if target != importer and target not in may_import:
        violations.append(f"{module} -> {imported} ({importer or 'the root'} may not import "
                          f"{target})")
      elif any(imported == f or imported.startswith(f + ".") for f in forbidden.get(importer, ())):
        violations.append(f"{module} -> {imported} (forbidden to {importer})")
  return violations


def test_subpackages_import_only_downwards():
  assert layout_violations(PACKAGE_DIR) == []


def experiments_importers(package_dir: Path) -> list[str]:
  """The modules under ``package_dir`` that import the repository's ``experiments`` (its tooling)."""
  importers = []
  for path in sorted(package_dir.rglob("*.py")):
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        names |= {alias.name for alias in node.names}
      elif isinstance(node, ast.ImportFrom) and not node.level:
        names.add(node.module or "")
    if any(name.split(".")[0] == "experiments" for name in names):
      importers.append(str(path.relative_to(package_dir)))
  return importers


def test_the_package_never_imports_the_experiment_tooling(tmp_path):
  """The wheel ships gradprom_jax alone, so an import of experiments/ would fail once installed."""
  assert experiments_importers(PACKAGE_DIR) == []
  (tmp_path / "m.py").write_text("def f():\n  from experiments.tools import evidence\n")
  assert experiments_importers(tmp_path) == ["m.py"]


def test_the_check_catches_an_upward_import_a_stray_module_and_an_undeclared_subpackage(tmp_path):
  package = tmp_path / "gradprom_jax"
  for name in ("core", "training", "inference", "tools"):
    (package / name).mkdir(parents=True)
    (package / name / "__init__.py").write_text("")
  (package / "__init__.py").write_text("from gradprom_jax.core import losses\n")
  (package / "core" / "losses.py").write_text("def f():\n  from gradprom_jax.training import x\n")
  (package / "inference" / "run.py").write_text("from ..training.train import initial_state\n")
  (package / "stray.py").write_text("")
  violations = layout_violations(
      package, allowed={"core": set(), "training": {"core"}, "inference": {"core", "training"}},
      forbidden={"inference": {"gradprom_jax.training.train"}}, root_imports={"core"})
  assert violations == [
      "tools: a subpackage missing from the table",
      "gradprom_jax.core.losses -> gradprom_jax.training.x (core may not import training)",
      "gradprom_jax.inference.run -> gradprom_jax.training.train (forbidden to inference)",
      "gradprom_jax.stray: a module outside every subpackage",
  ]


def test_the_public_api_is_importable_from_the_package():
  from gradprom_jax import (COMBINERS, CombinerState, GradPromState, combiner_metrics,  # noqa: F401
                            cosine_similarity, enhance_only, find_combiner_state, get_combiner,
                            gradprom, joint, pcgrad)
  assert set(gradprom_jax.__all__) >= {"gradprom", "joint", "pcgrad", "enhance_only", "COMBINERS"}
  assert all(hasattr(gradprom_jax, name) for name in gradprom_jax.__all__)


def test_the_training_entry_point_runs_as_a_module_from_any_directory(tmp_path):
  """``python -m gradprom_jax.training.main`` needs only the installed package, no repository."""
  environment = {**os.environ, "PYTHONPATH": str(PACKAGE_DIR.parent)}
  result = subprocess.run([sys.executable, "-m", "gradprom_jax.training.main", "--help"],
                          cwd=tmp_path, env=environment, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr
  assert "The training entry point" in result.stdout and "method" in result.stdout


# Modules that take typed pieces, never the config itself: configuration/run_spec.py and
# training/training_spec.py parse the config once into them. Every module of core, and the
# training modules the loop hands pieces to, and the task kinds.
CONFIG_FREE_MODULES = (
    *sorted(str(p.relative_to(PACKAGE_DIR)) for p in (PACKAGE_DIR / "core").rglob("*.py")),
    *sorted(str(p.relative_to(PACKAGE_DIR)) for p in (PACKAGE_DIR / "tasks").rglob("*.py")),
    "training/phases.py", "training/optimizers.py", "training/train_step.py",
    "training/evaluation.py", "training/train_state.py")


def config_readers(path: Path) -> list[str]:
  """Where the module at ``path`` touches a config: mentions ``ml_collections`` or ``ConfigDict``,
  or has a function parameter named ``config``."""
  source = path.read_text()
  found = [word for word in ("ml_collections", "ConfigDict") if word in source]
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
      arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
      found += [f"{getattr(node, 'name', 'lambda')}({a.arg})" for a in arguments
                if a.arg == "config"]
  return found


@pytest.mark.parametrize("module", CONFIG_FREE_MODULES)
def test_lower_layers_take_typed_pieces_not_the_config(module):
  assert config_readers(PACKAGE_DIR / module) == []


def test_the_config_check_catches_an_import_and_a_config_parameter(tmp_path):
  module = tmp_path / "m.py"
  module.write_text("import ml_collections\n\ndef f(x, *, config):\n  return x\n")
  assert config_readers(module) == ["ml_collections", "f(config)"]


def test_the_combiners_are_pure_optax_importing_nothing_else_of_the_package():
  combiners = PACKAGE_DIR / "core" / "combiners"
  outside = []
  for path in sorted(combiners.glob("*.py")):
    module = ".".join(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    imported = _imported_modules(ast.parse(path.read_text()), module, path.stem == "__init__",
                                 PACKAGE_DIR.parent)
    outside += [f"{module} -> {name}" for name in sorted(imported)
                if not name.startswith("gradprom_jax.core.combiners")]
  assert outside == []


# Modules that take the parsed experiment (training/experiment.py) and read no config key: the
# config reaches them only to be stored and compared as config.json, or handed to a parse function.
EXPERIMENT_TAKING_MODULES = ("training/train.py",)


def config_key_reads(path: Path) -> list[str]:
  """Where the module at ``path`` reads a key of a config: an attribute or item (``.get`` too) of a
  name ``config`` or of any ``<x>.config``."""
  found = []
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, (ast.Attribute, ast.Subscript)):
      owner = node.value
      if (isinstance(owner, ast.Name) and owner.id == "config"
          or isinstance(owner, ast.Attribute) and owner.attr == "config"):
        found.append((node.lineno, node.col_offset, f"line {node.lineno}: {ast.unparse(node)}"))
  return [read for _, _, read in sorted(found)]


@pytest.mark.parametrize("module", EXPERIMENT_TAKING_MODULES)
def test_the_loop_reads_the_parsed_experiment_not_config_keys(module):
  assert config_key_reads(PACKAGE_DIR / module) == []


def test_the_config_key_check_catches_attribute_item_and_get_reads(tmp_path):
  module = tmp_path / "m.py"
  module.write_text("def f(config, run, experiment):\n"
                    "  store(config, experiment.config)\n"   # handing it on reads no key
                    "  return config.seed, run.config.data.name, config['method'], config.get('x')\n")
  assert config_key_reads(module) == [
      "line 3: config.seed", "line 3: run.config.data", "line 3: config['method']",
      "line 3: config.get"]

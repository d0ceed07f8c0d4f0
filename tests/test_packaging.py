"""The install: setup.cfg's ranges, the exact pins of constraints.txt, the accelerator extras, CI.

Read as text (configparser, packaging): nothing is installed or downloaded.
"""
import ast
import configparser
import fnmatch
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
# Declared for a dependency's sake, not imported by the package: TFDS reads array_record files and
# forgets to declare importlib_resources; jaxlib is jax's backend.
NOT_IMPORTED = {"importlib-resources", "array-record", "jaxlib"}
IMPORT_NAMES = {"orbax-checkpoint": "orbax", "tensorflow-datasets": "tensorflow_datasets",
                "ml-collections": "ml_collections", "dm-pix": "dm_pix", "pillow": "PIL",
                "absl-py": "absl", "tensorboardx": "tensorboardX"}


def _setup_cfg() -> configparser.ConfigParser:
  parser = configparser.ConfigParser()
  parser.read(ROOT / "setup.cfg")
  return parser


def _requirements(text: str) -> list[Requirement]:
  lines = (line.split("#")[0].strip() for line in text.splitlines())
  return [Requirement(line) for line in lines if line]


def _install_requires() -> list[Requirement]:
  return _requirements(_setup_cfg()["options"]["install_requires"])


def _pins() -> dict[str, str]:
  pins = {}
  for requirement in _requirements((ROOT / "constraints.txt").read_text()):
    (specifier,) = requirement.specifier
    assert specifier.operator == "==", f"constraints.txt pins exactly: {requirement}"
    pins[canonicalize_name(requirement.name)] = specifier.version
  return pins


def _imported_top_level_modules() -> set[str]:
  modules = set()
  for path in [*ROOT.glob("gradprom_jax/**/*.py"), *ROOT.glob("experiments/**/*.py")]:
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        modules.update(alias.name.split(".")[0] for alias in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        modules.add(node.module.split(".")[0])
  return modules


def test_python_requires_matches_what_jax_flax_orbax_grain_need():
  assert SpecifierSet(_setup_cfg()["options"]["python_requires"]) == SpecifierSet(">=3.11")


def test_every_requirement_is_a_range_with_a_lower_bound_or_a_declared_exception():
  for requirement in _install_requires():
    lower = [s for s in requirement.specifier if s.operator in (">=", "~=")]
    exact = [s for s in requirement.specifier if s.operator == "=="]
    assert not exact, f"{requirement}: exact pins belong in constraints.txt"
    if canonicalize_name(requirement.name) != "importlib-resources":
      assert lower, f"{requirement} has no lower bound"


def _installed_packages() -> list[str]:
  """The packages pip installs: setup.cfg's ``find:`` include patterns matched as setuptools does."""
  include = [p.strip() for p in _setup_cfg()["options.packages.find"]["include"].split(",")]
  packages, pending = [], [d for d in ROOT.iterdir() if (d / "__init__.py").exists()]
  while pending:   # like setuptools, into packages only (not .venv/ or workdirs/)
    directory = pending.pop()
    packages.append(".".join(directory.relative_to(ROOT).parts))
    pending += [d for d in directory.iterdir() if (d / "__init__.py").exists()]
  return sorted(p for p in packages if any(fnmatch.fnmatchcase(p, pattern) for pattern in include))


def test_the_wheel_holds_the_library_not_the_experiment_tooling():
  packages = _installed_packages()
  assert "gradprom_jax.training" in packages
  assert all(package.split(".")[0] == "gradprom_jax" for package in packages)
  installed_modules = {path.stem for package in packages
                       for path in (ROOT / package.replace(".", "/")).glob("*.py")}
  tooling = {path.stem for path in (ROOT / "experiments" / "tools").glob("*.py")} - {"__init__"}
  assert {"comparison", "evidence", "fronts", "study", "worker_pool"} <= tooling
  assert installed_modules & tooling == set()


def test_every_requirement_is_used():
  imported = _imported_top_level_modules()
  for requirement in _install_requires():
    name = canonicalize_name(requirement.name)
    if name in NOT_IMPORTED:
      continue
    module = IMPORT_NAMES.get(name, name.replace("-", "_"))
    assert module in imported, f"{requirement.name} is declared but never imported"


def test_constraints_pin_every_requirement_inside_its_range():
  pins = _pins()
  test_extras = _requirements(_setup_cfg()["options.extras_require"]["test"])
  for requirement in [*_install_requires(), *test_extras]:
    name = canonicalize_name(requirement.name)
    assert name in pins, f"constraints.txt does not pin {requirement.name}"
    assert requirement.specifier.contains(pins[name], prereleases=True), (
        f"constraints.txt pins {name}=={pins[name]}, outside setup.cfg's {requirement}")


@pytest.mark.parametrize("extra", ["cuda12", "tpu"])
def test_accelerator_extras_install_the_same_jax_release_range(extra):
  (requirement,) = _requirements(_setup_cfg()["options.extras_require"][extra])
  base = {canonicalize_name(r.name): r for r in _install_requires()}
  assert requirement.name == "jax" and requirement.extras == {extra}
  assert requirement.specifier == base["jax"].specifier


def test_ci_runs_the_readmes_test_command():
  readme = (ROOT / "README.md").read_text()
  quick_start = readme[readme.index("## Quick start"):]
  commands = re.findall(r"^python3 -m venv \.venv && (.+)$", quick_start, flags=re.M)[:2]
  assert len(commands) == 2, "the Quick start has two commands"
  assert "pytest" in commands[1]
  ci = (ROOT / ".ci" / "run").read_text()
  assert commands[1].replace(" install -c", " install -q -c") in ci
  assert "-c constraints.txt" in commands[0]

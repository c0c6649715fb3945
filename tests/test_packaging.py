"""Packaging: every module the product imports is declared in pyproject.toml, and every declared
requirement is pinned in requirements.lock at a version the declaration allows.

The product is `editing/`, `ui/` and `app.py`; their imports are read from the source (AST), so an import
inside a function counts too. Import names are mapped to distributions through the installed metadata
(cv2 -> opencv-contrib-python, PIL -> pillow, yaml -> PyYAML).
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .conftest import ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+ (scripts/install.sh makes a 3.11 environment)

PROJECT_PACKAGES = {"editing", "ui", "app"}
# Imported only where the environment provides them, each behind an ImportError guard; never installed by us.
ENVIRONMENT_PROVIDED = {
    "spaces": "Hugging Face's ZeroGPU runtime, present only on a Space (ui/gpu.py)",
    "shapes_world": "the repository's development folder, absent from the wheel (editing/cli.py, eval --shapes)",
}


def product_files():
    return sorted([*(ROOT / "editing").rglob("*.py"), *(ROOT / "ui").rglob("*.py"), ROOT / "app.py"])


def imported_modules(path) -> set[str]:
    """Top-level names of the absolute imports in one source file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def third_party_imports() -> dict[str, list[str]]:
    """Third-party module name -> the product files importing it."""
    found: dict[str, list[str]] = {}
    for path in product_files():
        for name in imported_modules(path):
            if name in sys.stdlib_module_names or name == "__future__" or name in PROJECT_PACKAGES:
                continue
            found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def declared_requirements() -> dict[str, list[Requirement]]:
    """Every requirement of the project's dependencies and extras by canonical name (self-references left out)."""
    project = pyproject()
    own = canonicalize_name(project["name"])
    lines = [*project["dependencies"], *(r for extra in project.get("optional-dependencies", {}).values() for r in extra)]
    declared: dict[str, list[Requirement]] = {}
    for line in lines:
        requirement = Requirement(line)
        if canonicalize_name(requirement.name) != own:
            declared.setdefault(canonicalize_name(requirement.name), []).append(requirement)
    return declared


def locked_versions() -> dict[str, str]:
    """requirements.lock's pins by canonical name (`name==version`, markers ignored)."""
    pins = {}
    for line in (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\s*([A-Za-z0-9._-]+)\s*==\s*([^\s;]+)", line)
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def test_the_product_imports_modules_the_scan_finds():
    """The scan itself: it sees imports made inside functions too (peft in editing/lora.py, ray in editing/distributed.py)."""
    found = third_party_imports()
    assert {"torch", "diffusers", "gradio", "cv2", "PIL", "peft", "ray", "yaml"} <= set(found)
    assert not set(found) & PROJECT_PACKAGES


def test_every_module_the_product_imports_is_declared_in_pyproject():
    distributions = importlib.metadata.packages_distributions()
    declared = declared_requirements()
    missing = []
    for module, files in sorted(third_party_imports().items()):
        if module in ENVIRONMENT_PROVIDED:
            continue
        names = {canonicalize_name(d) for d in distributions.get(module, [])}
        if not names:
            missing.append(f"{module} (imported by {files[0]}) is not installed: no distribution to look for")
        elif not names & set(declared):
            missing.append(f"{module} (imported by {files[0]}, from {', '.join(sorted(names))}) is not declared")
    assert not missing, "pyproject.toml lacks: " + "; ".join(missing)


def test_ray_is_an_extra_peft_a_dependency_and_what_the_environment_provides_is_imported_lazily():
    """Ray is the `ray` extra, peft a dependency (LoRAs, presets, Fast preview); a module the environment
    provides is imported only inside functions, so importing the product never needs it."""
    project = pyproject()
    assert any(canonicalize_name(Requirement(r).name) == "peft" for r in project["dependencies"])
    assert [Requirement(r).name for r in project["optional-dependencies"]["ray"]] == ["ray"]
    assert not any(canonicalize_name(Requirement(r).name) == "ray" for r in project["dependencies"])
    for path in product_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        in_functions = {
            id(node)
            for function in ast.walk(tree)
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
            for node in ast.walk(function)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            provided = [name for name in names if name.split(".")[0] in ENVIRONMENT_PROVIDED]
            assert not provided or id(node) in in_functions, f"{path.relative_to(ROOT)} imports {provided[0]} at module level"


def test_every_declared_requirement_is_pinned_in_the_lock_at_an_allowed_version():
    pins = locked_versions()
    problems = []
    for name, requirements in sorted(declared_requirements().items()):
        if name not in pins:
            problems.append(f"{name} is not pinned")
            continue
        for requirement in requirements:
            if not requirement.specifier.contains(pins[name], prereleases=True):
                problems.append(f"{name}=={pins[name]} is outside {requirement}")
    assert not problems, "requirements.lock: " + "; ".join(problems)


def test_the_suites_openmp_threads_sleep_while_they_wait():
    """Suite time: tests/conftest.py sets OMP_WAIT_POLICY=PASSIVE before torch is imported, for this
    process and every subprocess and Ray worker it starts (docs/development.md, test time)."""
    import os
    import subprocess

    assert os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ.get('OMP_WAIT_POLICY'))"], capture_output=True, text=True
    )
    assert child.stdout.strip().upper() == "PASSIVE"

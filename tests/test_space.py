"""The Hugging Face Space folder: valid front matter, requirements that parse and match the lock, a self-contained app."""

from __future__ import annotations

import subprocess
import sys

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .conftest import ROOT


def lock_versions() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line:
            requirement = Requirement(line)
            pins[canonicalize_name(requirement.name)] = str(requirement.specifier).removeprefix("==")
    return pins


def builder():
    """scripts/build_space.py as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_space", ROOT / "scripts" / "build_space.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    return builder().build_space(tmp_path_factory.mktemp("space") / "out")


def front_matter(path) -> dict:
    text = path.read_text()
    assert text.startswith("---\n"), "a Space README must open with its YAML front matter"
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_front_matter_names_gradio_and_the_app(space):
    meta = front_matter(space / "README.md")
    import gradio

    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and (space / meta["app_file"]).is_file()
    assert meta["sdk_version"] == gradio.__version__ == lock_versions()["gradio"]
    assert str(meta["python_version"]) == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_requirements_parse_and_match_the_lock(space):
    lock = lock_versions()
    lines = [line for line in (space / "requirements.txt").read_text().splitlines() if line.strip() and not line.startswith("#")]
    pinned = {}
    for line in lines:
        requirement = Requirement(line)
        assert str(requirement.specifier).startswith("=="), f"{line} is not pinned"
        pinned[canonicalize_name(requirement.name)] = str(requirement.specifier).removeprefix("==")
    assert {name: lock[name] for name in pinned} == pinned
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    needed = {canonicalize_name(Requirement(d).name) for d in declared} - {
        "gradio",
        "gradio-client",
        "httpx",
    }  # the Space's sdk provides gradio and what it brings
    assert needed <= set(pinned), f"missing on the Space: {sorted(needed - set(pinned))}"
    assert all(line.strip() for line in (space / "packages.txt").read_text().splitlines())


def test_the_assembled_space_runs_on_its_own(space):
    code = "import app, editing.models as m; assert app.demo is not None and not m._cache; print(app.__file__, m.__file__)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=space,
        capture_output=True,
        text=True,
        timeout=180,
        env={"PYTHONPATH": "", "PATH": "/usr/bin:/bin", "HOME": str(space)},
    )
    assert result.returncode == 0, result.stderr[-800:]
    assert result.stdout.split() == [str(space / "app.py"), str(space / "editing" / "models.py")]  # nothing from the repo
    assert sorted(p.name for p in (space / "assets").glob("*.mp4")) == sorted(p.name for p in (ROOT / "assets").glob("*.mp4"))


def test_every_binary_file_goes_through_git_lfs(tmp_path):
    import fnmatch

    space = builder().build_space(tmp_path / "fresh")  # as built, before running the app adds caches
    rules = [line.split() for line in (space / ".gitattributes").read_text().splitlines() if line.strip()]
    lfs = [pattern for pattern, *attributes in rules if {"filter=lfs", "diff=lfs", "merge=lfs", "-text"} <= set(attributes)]
    binary = [p for p in space.rglob("*") if p.is_file() and b"\0" in p.read_bytes()[:8192]]
    assert binary and all(any(fnmatch.fnmatch(p.name, pattern) for pattern in lfs) for p in binary)
    assert set(builder().LFS_PATTERNS) <= set(lfs)


def test_building_into_a_used_folder_is_refused(space):
    with pytest.raises(SystemExit, match="not empty"):
        builder().build_space(space)

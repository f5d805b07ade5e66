"""Colab ships its own torch. Installing the course library there (the first cell of
every chapter) must keep it: pip must find the library's requirements satisfied by an
older supported torch and torchvision, not replace them. Checked offline with pip's own
resolver, in a virtual environment that sees this environment's packages except torch
and torchvision, which it has in older (fake, metadata-only) versions."""

import json
import os
import shutil
import site
import subprocess
import venv
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
OLD = {"torch": "2.3.1", "torchvision": "0.18.1"}  # the oldest pyproject.toml allows
# (the test below checks that pyproject.toml still says torch>=2.3)


def _fake_distribution(site_dir: Path, name: str, version: str, requires=()) -> None:
    info = site_dir / f"{name}-{version}.dist-info"
    info.mkdir()
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text("")


@pytest.fixture(scope="module")
def colab_like(tmp_path_factory):
    """(python of a venv with an older torch, the project's metadata-only copy)."""
    tmp = tmp_path_factory.mktemp("colab")
    venv.EnvBuilder(with_pip=True).create(tmp / "venv")
    python = tmp / "venv" / "bin" / "python"
    site_dir = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            text=True,
        ).strip()
    )
    _fake_distribution(site_dir, "torch", OLD["torch"])
    _fake_distribution(
        site_dir, "torchvision", OLD["torchvision"], [f"torch=={OLD['torch']}"]
    )
    # everything else (numpy, matplotlib, setuptools, ...) from this environment,
    # after the venv's own site-packages, so the fake torch is the one pip sees
    (site_dir / "course_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    project = tmp / "project"
    project.mkdir()
    shutil.copy(ROOT / "pyproject.toml", project)
    shutil.copy(ROOT / "README.md", project)
    # an empty __init__.py for every package pyproject.toml lists
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for package in config["tool"]["setuptools"]["packages"]:
        (project / package.replace(".", "/")).mkdir(parents=True)
        (project / package.replace(".", "/") / "__init__.py").write_text("")
    return python, project


def _dry_run(python, *requirements, report: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env |= {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    command = [
        python,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--no-build-isolation",
        "--report",
        str(report),
        *requirements,
    ]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_installing_the_course_keeps_an_older_torch(colab_like, tmp_path):
    python, project = colab_like
    seen = subprocess.check_output(
        [python, "-c", "import importlib.metadata as m; print(m.version('torch'))"],
        text=True,
    ).strip()
    assert seen == OLD["torch"]  # the venv's torch is the old one
    done = _dry_run(python, str(project), report=tmp_path / "report.json")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    installed = {item["metadata"]["name"] for item in report["install"]}
    assert installed == {"diffusion-lib"}, installed  # nothing else, torch least of all


def test_the_check_fails_for_a_library_that_needs_a_newer_torch(colab_like, tmp_path):
    """The same check on a copy of the project that asks for torch>=2.14: pip cannot
    keep the old torch (and, offline, has no newer one to replace it with)."""
    python, project = colab_like
    greedy = tmp_path / "greedy"
    shutil.copytree(project, greedy)
    toml = (greedy / "pyproject.toml").read_text()
    assert '"torch>=2.3"' in toml
    (greedy / "pyproject.toml").write_text(
        toml.replace('"torch>=2.3"', '"torch>=2.14"')
    )
    done = _dry_run(python, str(greedy), report=tmp_path / "report.json")
    said = done.stdout + done.stderr
    assert done.returncode != 0 and "depends on torch>=2.14" in said, said


def test_every_package_of_the_library_is_installed():
    """A subpackage left out of pyproject.toml's list works in the editable install
    the tests use and is missing from a wheel (diffusion_lib.recipes was, for one
    commit)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "diffusion_lib").rglob("__init__.py")
    }
    assert found == listed

"""Static checks on the chapter notebooks (nbval executes them separately, in quick
mode)."""

import re
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
REPO_URL = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]


def test_every_notebook_is_in_the_table_of_contents():
    toc = (ROOT / "_toc.yml").read_text()
    assert len(NOTEBOOKS) >= 5
    for nb in NOTEBOOKS:
        assert f"notebooks/{nb.stem}" in toc, nb.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{path.name}: clear the outputs"
            )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_structure(path):
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0].source
    assert first.startswith("# "), "starts with a title"
    badge = f"https://colab.research.google.com/github/{REPO_URL.removeprefix('https://github.com/')}/blob/main/notebooks/{path.name}"
    assert badge in first, (
        f"Colab badge must point at {badge} (repository URL from _config.yml)"
    )
    assert "What you will learn" in first and "Time budget" in first
    setup = nb.cells[1].source
    assert "dl.setup(" in setup and REPO_URL.removeprefix("https://") in setup, (
        "one set-up cell, right after the title"
    )
    text = "\n".join(c.source for c in nb.cells)
    for heading in ("## Summary", "## Exercises", "## References"):
        assert heading in text, f"{path.name} lacks {heading}"
    assert len(re.findall(r":::\{exercise\}", text)) >= 3, "at least 3 exercises"
    assert len(re.findall(r"check\(\"ch\d\d\.", text)) >= 3, (
        "each exercise has an automatic checker"
    )
    assert nb.metadata["kernelspec"]["name"] == "python3"


GPU_MEASURED = re.compile(r"measured on (an? )?(NVIDIA )?(H100|H200|A100|L4|T4|V100)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_gpu_times_are_measured_or_called_estimates(path):
    """A time-budget figure for a GPU is either measured on a named GPU or says that it
    is an estimate (no GPU run has measured it)."""
    first = nbformat.read(path, as_version=4).cells[0].source
    budget = first[first.index("Time budget") :].split("**What to expect")[0]
    rows = [line for line in budget.splitlines() if line.startswith("|")]
    if not rows:  # a paragraph of targets
        assert "(targets)" in budget or "estimate" in budget, budget
        return
    gpu_rows = [row for row in rows if row.split("|")[1].strip().startswith("GPU")]
    assert gpu_rows, f"{path.name}: the time budget has no GPU row"
    for row in gpu_rows:
        assert "estimate" in row or GPU_MEASURED.search(row), (
            f"{path.name}: {row!r} neither names the GPU it was measured on nor says "
            "it is an estimate"
        )

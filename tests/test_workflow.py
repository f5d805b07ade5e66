"""The GitHub Actions workflow (.github/workflows/book.yml) cannot run here: validate it
offline against the workflow schema that check-jsonschema ships, check that it runs the
README's two commands, and that the validation can fail."""

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"
CHECK = [
    str(Path(sys.executable).parent / "check-jsonschema"),
    "--builtin-schema",
    "vendor.github-workflows",
]


def _validate(path):
    return subprocess.run(
        [*CHECK, str(path)], capture_output=True, text=True, timeout=120
    )


def test_workflow_is_valid_and_runs_the_readme_commands():
    done = _validate(WORKFLOW)
    assert done.returncode == 0, done.stdout + done.stderr
    flow = yaml.safe_load(WORKFLOW.read_text())
    runs = {
        job: [s.get("run") for s in spec["steps"] if "run" in s]
        for job, spec in flow["jobs"].items()
    }
    assert runs["test"] == ["make test", "make test-from-scratch"]
    assert runs["book"] == ["make book"]
    uses = [s.get("uses", "") for s in flow["jobs"]["deploy"]["steps"]]
    assert any(u.startswith("actions/deploy-pages@") for u in uses)
    assert flow["jobs"]["book"]["if"] == "github.ref == 'refs/heads/main'"


def test_the_validation_can_fail(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on:", "run-on:", 1))
    done = _validate(broken)
    assert done.returncode != 0 and "runs-on" in done.stdout + done.stderr

"""Handouts, answer keys and grading (diffusion_lib.classroom)."""

import csv
import json

import nbformat
import pytest

from diffusion_lib import classroom
from diffusion_lib.exercises import REGISTRY, check

ROOT = classroom.repo_root()
CHAPTERS = classroom.course_notebooks()


def read(path):
    return nbformat.read(path, as_version=4)


def test_course_notebooks_follow_the_table_of_contents():
    toc = (ROOT / "_toc.yml").read_text()
    names = [p.name for p in CHAPTERS]
    assert names == sorted(names) and len(names) >= 8
    assert all(f"notebooks/{p.stem}" in toc for p in CHAPTERS)
    # every exercise a chapter checks is registered, and every registered one is used
    used = {n for p in CHAPTERS for n in classroom.exercise_names(read(p))}
    assert used == set(REGISTRY)


def test_course_notebooks_needs_a_table_of_contents(tmp_path):
    with pytest.raises(FileNotFoundError, match="_toc.yml"):
        classroom.course_notebooks(tmp_path)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_handout_drops_solutions_and_keeps_every_exercise(path):
    nb = read(path)
    handout = classroom.make_handout(nb)
    assert any(classroom.is_solution(c) for c in nb.cells)
    assert not any(classroom.is_solution(c) for c in handout.cells)
    assert not any("{solution}" in c.source for c in handout.cells)
    assert classroom.exercise_names(handout) == classroom.exercise_names(nb)
    code = [c for c in handout.cells if c.cell_type == "code"]
    stubs = [c for c in code if "raise NotImplementedError" in c.source]
    assert len(stubs) == len(classroom.exercise_names(nb))
    assert all(not c.get("outputs") for c in handout.cells if c.cell_type == "code")
    n_solutions = sum(classroom.is_solution(c) for c in nb.cells)
    assert len(handout.cells) == len(nb.cells) - n_solutions + 1  # + the note
    nbformat.validate(handout)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_key_fills_every_stub_with_its_solution(path):
    key = classroom.fill_solutions(read(path))
    code = [c.source for c in key.cells if c.cell_type == "code"]
    assert not any("raise NotImplementedError" in c for c in code)
    assert classroom.exercise_names(key) == classroom.exercise_names(read(path))
    nbformat.validate(key)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_worked_solution_passes_its_checker(path):
    """Each answer-key exercise cell (the worked solution, then the stub's check call)
    run on its own, with the notebooks' usual imports: every check passes. (The full
    answer keys of a few chapters also run as notebooks in test_grading_a_class.)"""
    import importlib
    import math
    import pkgutil

    import numpy as np
    import torch
    import torch.nn.functional as F

    import diffusion_lib as dl

    names = [m.name for m in pkgutil.iter_modules(dl.__path__) if m.name != "__main__"]
    modules = {n: importlib.import_module(f"diffusion_lib.{n}") for n in names}

    key = classroom.fill_solutions(read(path))
    cells = [
        c.source
        for c in key.cells
        if c.cell_type == "code" and classroom.CHECK_IMPORT in c.source
    ]
    assert len(cells) == len(classroom.exercise_names(key)) >= 3
    for source in cells:
        namespace = {
            **modules,
            "dl": dl,
            "torch": torch,
            "F": F,
            "math": math,
            "np": np,
        }
        code, call = source.split(classroom.CHECK_IMPORT)
        exec(code, namespace)
        exec(classroom.CHECK_IMPORT, namespace)
        result = eval(call.strip(), namespace)
        assert result.passed, result


def test_key_refuses_a_solution_without_its_exercise():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(":::{solution} x\n```python\npass\n```")]
    with pytest.raises(ValueError, match="does not follow an exercise"):
        classroom.fill_solutions(nb)


def test_write_versions_rejects_unknown_kinds(tmp_path):
    with pytest.raises(ValueError, match="handouts"):
        classroom.write_versions("answers", tmp_path)


def test_check_logs_its_verdict_for_the_grader(tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv(classroom.LOG_VARIABLE, str(log))

    def not_yet(a, t, x_shape):
        raise NotImplementedError

    check("ch02.extract", not_yet)
    check("ch02.extract", lambda a, t, x_shape: a[t])
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["name"] for r in rows] == ["ch02.extract"] * 2
    assert [r["passed"] for r in rows] == [False, False]
    assert rows[0]["message"].startswith("not attempted")
    assert "shape" in rows[1]["message"]
    log.write_text(log.read_text() + "garbage printed by a student\n")
    assert classroom.read_log(log) == {"ch02.extract": (False, rows[1]["message"])}


def test_mark_notebook_statuses():
    run = {"seconds": 3.0, "timed_out": False, "failed": "", "errors": []}
    verdicts = {
        "a": (True, "matches"),
        "b": (False, "not attempted yet (...)"),
        "c": (False, "trial 1: wrong values"),
    }
    marks = classroom.mark_notebook("ada", "nb.ipynb", "abcd", verdicts, run)
    assert [m.status for m in marks] == ["passed", "not attempted", "wrong", "not run"]
    assert [m.points for m in marks] == [1, 0, 0, 0]
    late = classroom.mark_notebook("ada", "nb", ["a"], {}, {**run, "timed_out": True})
    assert "time limit" in late[0].message


def test_grade_needs_student_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="no folder"):
        classroom.grade(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(ValueError, match="<student>"):
        classroom.grade(tmp_path, tmp_path / "out")


def test_a_notebook_past_the_time_limit_is_stopped(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import time\ntime.sleep(600)")]
    path = tmp_path / "slow.ipynb"
    nbformat.write(nb, path)
    run = classroom.run_notebook(path, tmp_path / "log", timeout=15)
    assert run["timed_out"] and run["seconds"] == 15


def test_graded_notebooks_run_headless(tmp_path):
    """The grader's kernels run with DIFFUSION_HEADLESS=1: no live widget (a slider,
    a progress bar) is displayed while nobody watches."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import os\nfrom diffusion_lib import viz\n"
        "assert os.environ['DIFFUSION_HEADLESS'] == '1'\n"
        "assert viz.slider(print, [1, 2]) is None"
    )]  # fmt: skip
    path = tmp_path / "headless.ipynb"
    nbformat.write(nb, path)
    run = classroom.run_notebook(path, tmp_path / "log", timeout=120)
    assert run["errors"] == [] and not run["timed_out"], run


KEY_RUNS = 3  # answer keys run whole: the first two chapters and the last one


def test_grading_a_class(tmp_path):
    """Every handout runs in quick mode with every exercise "not attempted"; the answer
    keys of the first two chapters and the last get full marks (every chapter's worked
    solutions pass their checkers in test_every_worked_solution_passes_its_checker,
    and every chapter runs under nbval); a notebook with a crashing cell and a wrong
    answer is graded, with the crash reported, not fatal."""
    subs = tmp_path / "submissions"
    handouts = classroom.write_versions("handouts", subs / "blank")
    keys = classroom.write_versions("key", subs / "key")
    assert len(handouts) == len(keys) == len(CHAPTERS)
    for path in keys[2:-1]:  # keep the keys of chapters 1, 2 and the last
        path.unlink()
    n_keyed = sum(len(classroom.exercise_names(read(p))) for p in keys if p.exists())
    broken = read(keys[1])  # chapter 2: one wrong answer and one crashing cell
    code = [c for c in broken.cells if c.cell_type == "code"]
    crash_cell = nbformat.v4.new_code_cell("raise RuntimeError('a student bug')")
    broken.cells.insert(broken.cells.index(code[2]) + 1, crash_cell)
    stub = next(c for c in code if 'check("ch02.log_snr"' in c.source)
    stub.source = stub.source.replace("torch.log(alphas_cumprod)", "alphas_cumprod")
    (subs / "crash").mkdir()
    nbformat.write(broken, subs / "crash" / keys[1].name)
    nbformat.write(broken, subs / "crash" / "not_a_chapter.ipynb")

    result = classroom.grade(subs, tmp_path / "grades", jobs=2, verbose=False)

    by = {}
    for m in result["marks"]:
        by.setdefault(m.student, []).append(m)
    assert {m.status for m in by["blank"]} == {"not attempted"}
    assert len(by["blank"]) == len(REGISTRY)
    assert all(m.points == 1 for m in by["key"]), [m for m in by["key"] if not m.points]
    assert len(by["key"]) == n_keyed and KEY_RUNS == sum(p.exists() for p in keys)
    crash = {m.exercise: m.status for m in by["crash"]}
    assert crash["ch02.log_snr"] == "wrong" and crash["ch02.extract"] == "passed"
    runs = {(r["student"], r["notebook"]): r for r in result["runs"]}
    for path in handouts:
        assert runs["blank", path.name]["errors"] == []
        assert not runs["blank", path.name]["timed_out"]
    assert [e[1] for e in runs["crash", keys[1].name]["errors"]] == ["RuntimeError"]
    assert runs["crash", "not_a_chapter.ipynb"]["unknown"]

    rows = list(csv.DictReader(open(tmp_path / "grades" / "grades.csv")))
    assert len(rows) == len(REGISTRY) + n_keyed + len(classroom.exercise_names(broken))
    summary = (tmp_path / "grades" / "summary.md").read_text()
    n = len(REGISTRY)
    assert "| key |" in summary and f"{n_keyed}/{n_keyed} |" in summary
    assert "| blank |" in summary and f"0/{n} |" in summary
    assert "raised RuntimeError: a student bug" in summary
    assert "not a chapter of the course" in summary


def test_instructor_guide_is_in_the_book_without_outputs():
    guide = read(ROOT / "book" / "instructor_guide.ipynb")
    assert "book/instructor_guide" in (ROOT / "_toc.yml").read_text()
    assert all(not c.get("outputs") for c in guide.cells if c.cell_type == "code")
    assert all(p.parent.name == "notebooks" for p in CHAPTERS)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_chapter_states_goals_for_the_guide(path):
    nb = read(path)
    assert classroom.chapter_title(nb).startswith("Chapter")
    assert len(classroom.chapter_goals(nb)) >= 3
    for name in classroom.checkpoints_used(nb):
        rows = dict(classroom.headline_results(name))
        assert rows["parameters"] > 0
        assert name not in classroom.HEADLINES or len(rows) > 2, name


@pytest.mark.parametrize("name", sorted(classroom.HEADLINES))
def test_every_headline_is_in_its_manifest(name):
    """headline_results skips a path that is not in the manifest, so a renamed group
    would silently drop a row of the instructor guide: every path must resolve."""
    rows = dict(classroom.headline_results(name))
    missing = [what for what, _ in classroom.HEADLINES[name] if what not in rows]
    assert not missing, (name, missing)

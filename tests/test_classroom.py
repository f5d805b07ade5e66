"""Handouts, answer keys and grading (diffusion_lib.classroom)."""

import csv

import nbformat
import pytest

from diffusion_lib import classroom, grading
from diffusion_lib.exercises import REGISTRY

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


def test_grading_a_real_chapter(tmp_path):
    """Chapter 2 as a class hands it in, graded end to end (the notebook run in quick
    mode in the sandbox, the functions in the harness): the handout gets "not
    attempted" everywhere, the answer key full marks, and a copy with a crashing cell
    and one wrong answer is graded with the crash reported, not fatal. (Every
    chapter's worked solutions pass the grader's harness in test_grading; every
    chapter runs under nbval.)"""
    subs = tmp_path / "submissions"
    chapter = next(p for p in CHAPTERS if p.name.startswith("02_"))
    n = len(classroom.exercise_names(read(chapter)))
    blank = classroom.make_handout(read(chapter))
    key = classroom.fill_solutions(read(chapter))
    broken = classroom.fill_solutions(read(chapter))
    code = [c for c in broken.cells if c.cell_type == "code"]
    crash_cell = nbformat.v4.new_code_cell("raise RuntimeError('a student bug')")
    broken.cells.insert(broken.cells.index(code[2]) + 1, crash_cell)
    stub = next(c for c in code if 'check("ch02.log_snr"' in c.source)
    stub.source = stub.source.replace("torch.log(alphas_cumprod)", "alphas_cumprod")
    for student, nb in (("blank", blank), ("key", key), ("crash", broken)):
        (subs / student).mkdir(parents=True)
        nbformat.write(nb, subs / student / chapter.name)
    nbformat.write(broken, subs / "crash" / "not_a_chapter.ipynb")

    result = grading.grade(subs, tmp_path / "grades", jobs=2, verbose=False)

    by = {}
    for m in result["marks"]:
        by.setdefault(m.student, {})[m.exercise] = m.status
    assert set(by["blank"].values()) == {"not attempted"} and len(by["blank"]) == n
    assert set(by["key"].values()) == {"passed"} and len(by["key"]) == n
    assert by["crash"]["ch02.log_snr"] == "wrong"
    assert by["crash"]["ch02.extract"] == "passed"
    runs = {(r["student"], r["notebook"]): r for r in result["runs"]}
    assert runs["blank", chapter.name]["errors"] == []
    assert not runs["key", chapter.name]["timed_out"]
    assert [e[1] for e in runs["crash", chapter.name]["errors"]] == ["RuntimeError"]
    assert "not a chapter" in runs["crash", "not_a_chapter.ipynb"]["note"]
    rows = list(csv.DictReader(open(tmp_path / "grades" / "grades.csv")))
    assert len(rows) == 3 * n
    summary = (tmp_path / "grades" / "summary.md").read_text()
    assert f"| key | {n}/{n} | {n}/{n} |" in summary
    assert f"| blank | 0/{n} | 0/{n} |" in summary
    assert "raised RuntimeError: a student bug" in summary


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

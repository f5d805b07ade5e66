"""Every chapter's answer key through the grader's harness (in a file of its own, so
that pytest-xdist can run it beside the other grading tests: it starts one harness per
chapter)."""

import time

import nbformat

from diffusion_lib import classroom, grading


def test_every_worked_solution_passes_the_graders_harness_unflagged():
    """The answer key of every chapter, checked as the grader checks a student (in the
    harness, on inputs from a fresh seed, compared in this process): full marks and
    no flag. A wrong answer and a thin wrapper of the library are caught."""
    for path in classroom.course_notebooks():
        key = classroom.fill_solutions(nbformat.read(path, as_version=4))
        functions = grading.checked_functions(key)
        assert list(functions) == classroom.exercise_names(key)
        checked = grading.check_functions(key, functions, seed=int(time.time()))
        for ex, expr in functions.items():
            status, points, message, calls, origin = checked[ex]
            assert (status, points, origin) == ("passed", 1, "notebook"), (ex, message)
            assert not grading.suspicions(key, ex, expr, grading._wrapped(ex)), ex
            assert not set(calls) & grading._wrapped(ex), (ex, calls)

"""Automatic checkers for the chapters' exercises.

Each exercise is registered with a reference implementation and a maker of random
inputs. `check(name, student_fn)` runs both on several random inputs and says exactly
what differs: an exception, a wrong shape or dtype, NaN or inf, or wrong values (with
the largest error and where). It never raises (not even for an exception that is not an
`Exception`, such as `SystemExit` from the student's code), so a notebook with an
unanswered exercise still runs top to bottom. Each call of the student's function gets
its own deep copy of the inputs, so an answer that changes its inputs (a shared noise
schedule, say) cannot change the next answer's verdict.

In a notebook, `check` is feedback for the student; a grade is not taken from it.
`diffusion_lib.classroom grade` checks each exercise's function again in a process of
its own, on inputs from a seed drawn at grading time, and compares in the grader.

    from diffusion_lib.exercises import check
    check("ch02.extract", my_extract)
"""

# importing the chapter modules registers every chapter's exercises
from . import (  # noqa: F401
    ch01,
    ch02,
    ch03,
    ch04,
    ch05,
    ch06,
    ch07,
    ch08,
    ch09,
    ch10,
    ch11,
    ch12,
    ch13,
)
from .base import (
    REGISTRY,
    CheckResult,
    Exercise,
    call_with_limit,
    check,
    compare,
    register,
    run_student,
    verdict,
)

__all__ = [
    "REGISTRY",
    "CheckResult",
    "Exercise",
    "call_with_limit",
    "check",
    "compare",
    "register",
    "run_student",
    "verdict",
]

"""The exercises' machinery: the registry, `register`, `check` and the comparison that
says what differs (see diffusion_lib.exercises). The chapter modules register into
REGISTRY; this module imports none of them, so that the package has no import cycle."""

from __future__ import annotations

import copy
import math
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

REGISTRY: dict = {}


@dataclass
class Exercise:
    name: str
    reference: Callable
    # make_inputs(generator: torch.Generator) -> dict of keyword arguments
    make_inputs: Callable
    atol: float = 1e-5
    hint: str = ""
    # description of a typical student mistake -> a function that makes exactly it
    mistakes: dict = field(default_factory=dict)


@dataclass
class CheckResult:
    name: str
    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return (
            "PASSED " if self.passed else "NOT YET "
        ) + f"{self.name}: {self.message}"


def register(
    name: str,
    reference: Callable,
    make_inputs: Callable,
    atol: float = 1e-5,
    hint: str = "",
    mistakes: dict | None = None,
) -> Exercise:
    """Add an exercise to the registry (chapter modules call this at import).

    reference: the right answer, called with the keyword arguments of make_inputs.
    make_inputs(generator) -> dict: one trial's random inputs.
    atol: the largest absolute error that still counts as agreeing.
    hint: a sentence appended to every failure message (name the usual pitfalls).
    mistakes: common student mistakes, {a plain-English description (e.g. "uses
        exp(logvar) as the standard deviation"): a function with the reference's
        signature that makes exactly that mistake}; the instructor guide shows what
        `check` says to each, and the tests make sure that `check` rejects every one.
    """
    REGISTRY[name] = Exercise(
        name, reference, make_inputs, atol, hint, dict(mistakes or {})
    )
    return REGISTRY[name]


def _describe(value) -> str:
    if torch.is_tensor(value):
        return f"tensor{list(value.shape)} {str(value.dtype).replace('torch.', '')}"
    return type(value).__name__


def compare(got, want, atol: float, where: str = "output") -> str | None:
    """None if got matches want (tensors within atol, recursively through tuples, lists
    and dicts), else why not."""
    if torch.is_tensor(want):
        if not torch.is_tensor(got):
            return f"{where} should be a {_describe(want)}, got {_describe(got)}"
        if tuple(got.shape) != tuple(want.shape):
            return f"{where} has shape {list(got.shape)}, expected {list(want.shape)}"
        if got.dtype != want.dtype:
            msg = (
                f"{where} has dtype {str(got.dtype).replace('torch.', '')}, expected "
                f"{str(want.dtype).replace('torch.', '')}"
            )
            if want.dtype == torch.float64 and got.is_floating_point():
                msg += (
                    ": use float64 (lower precision cannot reach the tolerance "
                    f"{atol:g})"
                )
            return msg
        return _compare_values(got.detach(), want.detach(), atol, where)
    if isinstance(want, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            return (
                f"{where} should be a sequence of {len(want)} items, "
                f"got {_describe(got)}"
            )
        for i, (g, w) in enumerate(zip(got, want)):
            msg = compare(g, w, atol, f"{where}[{i}]")
            if msg:
                return msg
        return None
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            return (
                f"{where} should be a dict with keys {sorted(want)}, "
                f"got {_describe(got)}"
            )
        return next(
            (
                m
                for k in want
                if (m := compare(got[k], want[k], atol, f"{where}[{k!r}]"))
            ),
            None,
        )
    if isinstance(want, float):
        if not isinstance(got, (int, float)) or abs(got - want) > atol:
            return f"{where} is {got!r}, expected {want:.6g}"
        return None
    return None if got == want else f"{where} is {got!r}, expected {want!r}"


def _compare_values(got, want, atol: float, where: str) -> str | None:
    """None if the same-shaped tensors agree within atol, else why not."""
    msg = _non_finite(got, want, where)
    if msg:
        return msg
    got64, want64 = got.double(), want.double()
    err = (got64 - want64).abs().nan_to_num(nan=float("inf"))
    # equal infinities, or NaN where the reference has NaN too, count as agreeing
    err[(got64 == want64) | (got64.isnan() & want64.isnan())] = 0.0
    if bool((err <= atol).all()):
        return None
    idx = tuple(int(i) for i in torch.nonzero(err == err.max())[0])
    msg = (
        f"{where} differs from the reference: largest error {err.max().item():.3g} "
        f"at index {idx} (got {got[idx].item():.5g}, expected "
        f"{want[idx].item():.5g}); {int((err > atol).sum())} of {err.numel()} values "
        f"off by more than {atol:g}"
    )
    return msg


def _non_finite(got, want, where: str) -> str | None:
    """Say where `got` holds NaN or inf that `want` does not, else None."""
    if not (got.is_floating_point() or got.is_complex()):
        return None
    bad = ~torch.isfinite(got) & torch.isfinite(want)
    if not bool(bad.any()):
        return None
    idx = tuple(int(i) for i in torch.nonzero(bad)[0])
    kind = "NaN" if bool(torch.isnan(got[idx])) else "inf"
    return (
        f"your answer contains {kind} at index {idx} of {where} (expected "
        f"{want[idx].item():.5g}); {int(bad.sum())} of {bad.numel()} values are NaN "
        "or inf. Look for a division by zero, or the log or sqrt of a value <= 0"
    )


def _inputs_text(kwargs: dict) -> str:
    return ", ".join(
        f"{k}={_describe(v) if torch.is_tensor(v) else repr(v)}"
        for k, v in kwargs.items()
    )


def check(
    name: str,
    student_fn: Callable,
    trials: int = 5,
    seed: int = 0,
    verbose: bool = False,
    timeout: float | None = None,
) -> CheckResult:
    """Compare `student_fn` with exercise `name`'s reference on `trials` random inputs.

    Returns a CheckResult, which a notebook displays as "PASSED ..." or "NOT YET ...:
    what is wrong" (verbose=True also prints it, for use inside scripts). `timeout`
    (seconds, interactive use) stops a student function that runs longer than that on
    one input; it works in the main thread, between Python operations (a single C call
    that never returns, such as `sum(range(10**15))`, cannot be interrupted in-process:
    the grader runs every check in a process it can kill). Never raises."""
    result = _check(name, student_fn, trials, seed, timeout)
    if verbose:
        print(repr(result))
    return result


def _check(name, student_fn, trials, seed, timeout) -> CheckResult:
    if not isinstance(name, str) or name not in REGISTRY:
        return CheckResult(
            str(name),
            False,
            f"unknown exercise {name!r}; expected one of {sorted(REGISTRY)}",
        )
    if not callable(student_fn):
        return CheckResult(
            name, False, f"expected a function, got {_describe(student_fn)}"
        )
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        return CheckResult(
            name, False, f"trials must be a positive integer, got {trials!r}"
        )
    bad_timeout = timeout is not None and not (
        isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0
    )
    if bad_timeout:
        return CheckResult(
            name,
            False,
            f"timeout must be a positive number of seconds or None, got {timeout!r}",
        )
    ex = REGISTRY[name]
    gen = torch.Generator().manual_seed(seed)
    for trial in range(trials):
        failure = _failure(ex, student_fn, ex.make_inputs(gen), trial, timeout)
        if failure:
            return CheckResult(name, False, failure)
    return CheckResult(name, True, f"matches the reference on {trials} random inputs")


class _TimeLimit(BaseException):
    """Raised inside the student's function when `check(..., timeout=)` runs out."""


def call_with_limit(fn: Callable, kwargs: dict, timeout: float | None):
    """fn(**kwargs), stopped with _TimeLimit after `timeout` seconds (main thread
    only; elsewhere, and with timeout=None, no limit)."""
    main = threading.current_thread() is threading.main_thread()
    if timeout is None or not main or not hasattr(signal, "setitimer"):
        return fn(**kwargs)

    def stop(signum, frame):
        raise _TimeLimit

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        return fn(**kwargs)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _failure(
    ex: Exercise,
    student_fn: Callable,
    kwargs: dict,
    trial: int,
    timeout: float | None = None,
) -> str | None:
    """Why `student_fn` fails on one trial's inputs (None: it matches the reference).
    The reference and the student each get their own deep copy of the inputs."""
    want = ex.reference(**copy.deepcopy(kwargs))
    got, failure = run_student(student_fn, copy.deepcopy(kwargs), timeout)
    if failure is not None:
        return failure
    return verdict(ex, got, want, kwargs, trial)


def run_student(student_fn: Callable, kwargs: dict, timeout: float | None = None):
    """(output, None), or (None, why it did not return): the student's function called
    on kwargs, with every exception caught (BaseException included: a SystemExit or a
    KeyboardInterrupt from the student's code is reported, not raised)."""
    try:
        return call_with_limit(student_fn, kwargs, timeout), None
    except NotImplementedError:
        return None, "not attempted yet (the function raises NotImplementedError)"
    except _TimeLimit:
        return None, (
            f"ran past the time limit of {timeout:g} s on inputs "
            f"({_inputs_text(kwargs)})"
        )
    except BaseException as err:  # a bug in the student's code: report it, never crash
        inputs = _inputs_text(kwargs)
        return None, f"raised {type(err).__name__}: {err} on inputs ({inputs})"


def verdict(ex: Exercise, got, want, kwargs: dict, trial: int) -> str | None:
    """None if `got` matches the reference's `want`, else the student's message."""
    try:
        msg = compare(got, want, ex.atol)
    except Exception as err:  # an answer of a type compare() does not foresee
        msg = f"could not compare your answer with the reference ({err!r})"
    if msg is None:
        return None
    hint = f" Hint: {ex.hint}" if ex.hint else ""
    return f"trial {trial + 1} with inputs ({_inputs_text(kwargs)}): {msg}.{hint}"

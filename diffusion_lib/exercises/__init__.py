"""Automatic checkers for the chapters' exercises.

Each exercise is registered with a reference implementation and a maker of random inputs.
`check(name, student_fn)` runs both on several random inputs and says exactly what differs:
an exception, a wrong shape or dtype, or wrong values (with the largest error and where).
It never raises, so a notebook with an unanswered exercise still runs top to bottom.

    from diffusion_lib.exercises import check
    check("ch02.extract", my_extract)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

REGISTRY: dict = {}


@dataclass
class Exercise:
    name: str
    reference: Callable
    make_inputs: Callable  # make_inputs(generator: torch.Generator) -> dict of keyword arguments
    atol: float = 1e-5
    hint: str = ""


@dataclass
class CheckResult:
    name: str
    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return ("PASSED " if self.passed else "NOT YET ") + f"{self.name}: {self.message}"


def register(name: str, reference: Callable, make_inputs: Callable, atol: float = 1e-5, hint: str = "") -> Exercise:
    """Add an exercise to the registry (chapter modules call this at import)."""
    REGISTRY[name] = Exercise(name, reference, make_inputs, atol, hint)
    return REGISTRY[name]


def _describe(value) -> str:
    if torch.is_tensor(value):
        return f"tensor{list(value.shape)} {str(value.dtype).replace('torch.', '')}"
    return type(value).__name__


def compare(got, want, atol: float, where: str = "output") -> str | None:
    """None if got matches want (tensors within atol, recursively through tuples/lists/dicts), else why not."""
    if torch.is_tensor(want):
        if not torch.is_tensor(got):
            return f"{where} should be a {_describe(want)}, got {_describe(got)}"
        if tuple(got.shape) != tuple(want.shape):
            return f"{where} has shape {list(got.shape)}, expected {list(want.shape)}"
        if got.dtype.is_floating_point != want.dtype.is_floating_point:
            return f"{where} has dtype {got.dtype}, expected {want.dtype}"
        err = (got.detach().double() - want.detach().double()).abs()
        if not bool((err <= atol).all()):
            idx = tuple(int(i) for i in torch.nonzero(err == err.max())[0])
            return (f"{where} differs from the reference: largest error {err.max().item():.3g} at index {idx} "
                    f"(got {got[idx].item():.5g}, expected {want[idx].item():.5g}); {int((err > atol).sum())} of "
                    f"{err.numel()} values off by more than {atol:g}")
        return None
    if isinstance(want, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            return f"{where} should be a sequence of {len(want)} items, got {_describe(got)}"
        for i, (g, w) in enumerate(zip(got, want)):
            msg = compare(g, w, atol, f"{where}[{i}]")
            if msg:
                return msg
        return None
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            return f"{where} should be a dict with keys {sorted(want)}, got {_describe(got)}"
        return next((m for k in want if (m := compare(got[k], want[k], atol, f"{where}[{k!r}]"))), None)
    if isinstance(want, float):
        if not isinstance(got, (int, float)) or abs(got - want) > atol:
            return f"{where} is {got!r}, expected {want:.6g}"
        return None
    return None if got == want else f"{where} is {got!r}, expected {want!r}"


def _inputs_text(kwargs: dict) -> str:
    return ", ".join(f"{k}={_describe(v) if torch.is_tensor(v) else repr(v)}" for k, v in kwargs.items())


def check(name: str, student_fn: Callable, trials: int = 5, seed: int = 0, verbose: bool = False) -> CheckResult:
    """Compare `student_fn` with exercise `name`'s reference on `trials` random inputs.

    Returns a CheckResult, which a notebook displays as "PASSED ..." or "NOT YET ...: what is wrong"
    (verbose=True also prints it, for use inside scripts)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown exercise {name!r}; expected one of {sorted(REGISTRY)}")
    ex = REGISTRY[name]
    gen = torch.Generator().manual_seed(seed)
    result = None
    for trial in range(trials):
        kwargs = ex.make_inputs(gen)
        want = ex.reference(**_clone(kwargs))
        try:
            got = student_fn(**_clone(kwargs))
        except NotImplementedError:
            result = CheckResult(name, False, "not attempted yet (the function raises NotImplementedError)")
            break
        except Exception as err:  # report any bug in the student's code, do not crash the notebook
            result = CheckResult(name, False, f"raised {type(err).__name__}: {err} on inputs ({_inputs_text(kwargs)})")
            break
        msg = compare(got, want, ex.atol)
        if msg:
            hint = f" Hint: {ex.hint}" if ex.hint else ""
            result = CheckResult(name, False, f"trial {trial + 1} with inputs ({_inputs_text(kwargs)}): {msg}.{hint}")
            break
    if result is None:
        result = CheckResult(name, True, f"matches the reference on {trials} random inputs")
    if verbose:
        print(repr(result))
    return result


def _clone(kwargs: dict) -> dict:
    return {k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()}


from . import ch01, ch02, ch03, ch04, ch05  # noqa: E402,F401  (registers every chapter's exercises)

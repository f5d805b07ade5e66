"""Grading a class: verdicts that the students' code cannot touch.

`python -m diffusion_lib.classroom grade SUBMISSIONS` calls `grade`. For every student
folder and every chapter notebook in it:

1. **The notebook runs** top to bottom in a fresh kernel, in a sandbox
   (`diffusion_lib.sandbox`: no network, every file system read-only, the other
   students' folders, the answer key and the grades hidden, limits on time, memory and
   file size; the whole process tree killed at the limit). Its errors are reported.
   Nothing it prints, writes or patches is used for the grade.
2. **Each exercise's function is checked by a harness** that the grader starts in a
   second, fresh sandbox. The harness runs only the notebook's definitions (its
   imports, functions and classes, not its other statements), calls the function that
   the handout names (`my_extract` in `check("ch02.extract", my_extract)`) on inputs
   that the grader drew from a seed chosen at grading time, and hands the outputs back
   as plain tensors and numbers. The grader compares them with the references, which it
   computes in its own process. The student's `check(...)` call (its arguments, its
   `trials=`, its log) plays no part.
3. **Submissions that hand back the library's own answer are flagged**, with the
   reason, for the teacher to judge: a function that is the library's (or the
   exercise's reference), a function that calls the library function whose result the
   reference returns (a thin wrapper), or one that looks at the checker's internals or
   its own call stack. The grader finds these by reading the notebook's code in its
   own process, and by recording which library functions the student's code called.
   A flagged answer gets 0 points until the teacher decides.

Results are written as each student finishes (one JSON file per student, written
atomically, then `grades.csv` and `summary.md` again), so a crash loses at most the
student being graded, and a second run resumes: a student whose files and grading
settings have not changed is not graded again. The `grades.csv` and `summary.md` of an
earlier run are kept under `previous/`.

What the grader vouches for: that each exercise's function, as defined in the
notebook, returns the reference's values on inputs the student could not know in
advance; what it cannot: who wrote the function (it may be copied from a classmate or
from the book's worked solution, which students can read), or whether the rest of the
notebook was done.
"""

from __future__ import annotations

import ast
import copy
import csv
import dataclasses
import functools
import hashlib
import importlib
import io
import json
import math
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import nbformat

from . import sandbox
from .classroom import course_notebooks, exercise_names
from .setup import HEADLESS

LIBRARY = Path(__file__).resolve().parent
TRIALS = 5  # random inputs per exercise
MAX_NOTEBOOK_BYTES = 20 * 2**20  # a submitted notebook larger than this is refused
HARNESS_SECONDS = 60.0  # the most one exercise's function may take on all its trials
STARTUP_SECONDS = 60.0  # and the harness to import torch and run the definitions
STATUSES = (
    "passed",
    "wrong",
    "not attempted",
    "not run",
    "flagged",
    "missing",
    "refused",
)
# what a student's function must not touch (as a name or an attribute): the checker's
# internals, the call stack, the process's memory
SUSPICIOUS = {
    "REGISTRY": "reads the checker's registry of reference answers",
    "_failure": "touches the checker's internals",
    "_check": "touches the checker's internals",
    "run_student": "touches the checker's internals",
    "currentframe": "inspects the call stack",
    "_getframe": "inspects the call stack",
    "f_back": "inspects the call stack",
    "f_locals": "inspects the call stack",
    "f_globals": "inspects the call stack",
    "setprofile": "turns off the grader's record of library calls",
    "settrace": "turns off the grader's record of library calls",
    "get_objects": "searches the process's memory",
    "get_referrers": "searches the process's memory",
    "import_module": "imports modules by a computed name",
    "__builtins__": "reaches Python's built-ins by name",
    "__globals__": "reads another function's globals",
}
# built-in functions a student's function must not call (as a plain name: `model.eval()`
# is fine)
SUSPICIOUS_BUILTINS = {
    "__import__": "imports modules by a computed name",
    "eval": "runs code built at run time",
    "exec": "runs code built at run time",
    "compile": "runs code built at run time",
    "globals": "reads the notebook's globals by name",
    "vars": "reads an object's internals by name",
    "open": "reads or writes files",
}
SUSPICIOUS_MODULES = (
    "inspect",
    "gc",
    "ctypes",
    "importlib",
    "builtins",
    "diffusion_lib.exercises",
)


@dataclass
class Mark:
    student: str
    notebook: str
    exercise: str
    status: str  # one of STATUSES
    points: int
    message: str


@dataclass(frozen=True)
class Settings:
    mode: str = "quick"
    timeout: float = 600.0  # seconds per notebook run
    memory: int = sandbox.Limits().memory_bytes
    chapters: tuple = ()  # the assigned chapters' file names; () = what was submitted
    check_seconds: float = HARNESS_SECONDS  # per exercise, all its trials

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


# ----------------------------------------------------------- reading a notebook's code


def python_source(cell_source: str) -> str:
    """A code cell as plain Python (IPython's %magics and !shell lines rewritten)."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(cell_source)


def code_cells(nb) -> list[tuple[int, str, ast.Module | None]]:
    """(cell index, Python source, its syntax tree or None) for every code cell."""
    out = []
    for i, cell in enumerate(nb.cells):
        if cell.get("cell_type") != "code":
            continue
        try:
            source = python_source(str(cell.source))
            out.append((i, source, ast.parse(source)))
        except (SyntaxError, ValueError, RecursionError):
            out.append((i, str(cell.source), None))
    return out


def _literal_call(node, name: str, literal: int, nargs: int) -> bool:
    """`node` is a call of the plain name `name` with at least `nargs` arguments,
    argument `literal` a string constant (`check("ch02.extract", f)`)."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == name
        and len(node.args) >= nargs
        and isinstance(node.args[literal], ast.Constant)
        and isinstance(node.args[literal].value, str)
    )


def checked_functions(nb) -> dict[str, str]:
    """{exercise: the expression its `check("name", expr)` call passes}, in order."""
    found = {}
    for _, source, tree in code_cells(nb):
        if tree is None:
            continue
        for node in ast.walk(tree):
            if _literal_call(node, "check", 0, 2):
                found[node.args[0].value] = ast.get_source_segment(source, node.args[1])
    return found


DEFINITION = (
    ast.Import,
    ast.ImportFrom,
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
)


def _is_alias(node) -> bool:
    """`name = <a lambda, a name or an attribute>`: kept with the definitions."""
    return (
        isinstance(node, ast.Assign)
        and all(isinstance(t, ast.Name) for t in node.targets)
        and isinstance(node.value, (ast.Lambda, ast.Name, ast.Attribute))
    )


def definitions(nb) -> list[tuple[int, str]]:
    """(cell index, source) of the notebook's top-level imports, functions, classes and
    aliases (`f = lambda ...`, `f = g`): what the harness runs to find the student's
    functions. Other statements (training, plotting, the check calls) are left out."""
    out = []
    for i, _source, tree in code_cells(nb):
        if tree is None:
            continue
        keep = [n for n in tree.body if isinstance(n, DEFINITION) or _is_alias(n)]
        if keep:
            out.append((i, ast.unparse(ast.Module(body=keep, type_ignores=[]))))
    return out


# ------------------------------------------------------------- what counts as a copy


def _qualname(frame) -> str:
    return f"{frame.f_globals.get('__name__', '?')}.{frame.f_code.co_qualname}"


def wrapped_functions(ex) -> set[str]:
    """The library functions whose result the exercise's reference returns as its own
    (called directly by the reference, returning the same value): handing back one of
    them is handing back the reference."""
    from .exercises import compare

    gen = __import__("torch").Generator().manual_seed(12345)
    kwargs = ex.make_inputs(gen)
    ref_code, returns = ex.reference.__code__, []

    def hook(frame, event, arg):
        back = frame.f_back
        if event == "return" and back is not None and back.f_code is ref_code:
            if frame.f_code.co_filename.startswith(str(LIBRARY)):
                returns.append((_qualname(frame), arg))

    previous = sys.getprofile()
    sys.setprofile(hook)
    try:
        want = ex.reference(**copy.deepcopy(kwargs))
    finally:
        sys.setprofile(previous)
    same = set()
    for name, value in returns:
        if "diffusion_lib.exercises" in name:
            continue
        try:
            if value is want or compare(value, want, ex.atol) is None:
                same.add(name)
        except Exception:
            continue
    return same


def _resolve(dotted: str):
    """The library object a dotted name names (None if it names nothing there)."""
    if not dotted.startswith("diffusion_lib"):
        return None
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def _object_name(obj) -> str | None:
    code = getattr(obj, "__code__", None)
    module = getattr(obj, "__module__", None)
    if code is None or module is None:
        return None
    return f"{module}.{code.co_qualname}"


def _imports(cells) -> dict[str, str]:
    """{name in the notebook: the dotted name it was imported as}."""
    names = {}
    for _, _, tree in cells:
        if tree is None:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        names[a.asname] = a.name
                    else:
                        top = a.name.split(".")[0]
                        names[top] = top
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for a in node.names:
                    names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _dotted(node) -> str | None:
    """`a.b.c` (or `getattr(a.b, "c")`) as a dotted string, else None."""
    parts = []
    while True:
        if isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        elif _literal_call(node, "getattr", 1, 2):
            parts.append(node.args[1].value)
            node = node.args[0]
        elif isinstance(node, ast.Name):
            parts.append(node.id)
            return ".".join(reversed(parts))
        else:
            return None


def suspicions(nb, exercise: str, function: str, wrapped: set[str]) -> list[str]:
    """Why the function checked for `exercise` (the expression `function`, as the
    handout names it) may hand back the library's answer instead of the student's:
    read from the notebook's code in the grader's own process."""
    from . import exercises

    cells = code_cells(nb)
    imports = _imports(cells)
    top = {}  # the last top-level definition of each name, as the notebook runs them
    for _, _, tree in cells:
        for node in tree.body if tree is not None else []:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                top[node.name] = node
            elif _is_alias(node) or isinstance(node, ast.Assign):
                for t in node.targets:
                    if isinstance(t, ast.Name):
                        top[t.id] = node
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for a in node.names:
                    top[(a.asname or a.name).split(".")[0]] = node
    reasons = []
    binding = top.get(function)
    if isinstance(binding, (ast.Import, ast.ImportFrom)):
        reasons.append(f"`{function}` is imported, not written in the notebook")
    elif isinstance(binding, ast.Assign) and not isinstance(binding.value, ast.Lambda):
        reasons.append(
            f"`{function}` is bound to `{ast.unparse(binding.value)}`, not defined as "
            "a function of the notebook's"
        )
    forbidden = {name for name in wrapped}
    forbidden.add(_object_name(exercises.REGISTRY[exercise].reference))
    seen, todo = set(), [function]
    while todo:  # the function, and the notebook's functions it uses, transitively
        name = todo.pop()
        if name in seen or name not in top:
            continue
        seen.add(name)
        for node in ast.walk(top[name]):
            if isinstance(node, ast.Name) and node.id in top and node.id not in seen:
                if not isinstance(top[node.id], (ast.Import, ast.ImportFrom)):
                    todo.append(node.id)
            reasons += _node_suspicions(node, imports, forbidden)
    return list(dict.fromkeys(r for r in reasons if r))


def _node_suspicions(node, imports, forbidden) -> list[str]:
    out = []
    word = (
        node.id
        if isinstance(node, ast.Name)
        else node.attr
        if isinstance(node, ast.Attribute)
        else None
    )
    if word is not None:
        why = SUSPICIOUS.get(word)
        if isinstance(node, ast.Name) and word in SUSPICIOUS_BUILTINS:
            why = SUSPICIOUS_BUILTINS[word]
        if word == "stack" and isinstance(node, ast.Attribute):
            base = _dotted(node.value)
            if base and imports.get(base.split(".")[0], base).startswith("inspect"):
                why = "inspects the call stack"
        if why:
            out.append(f"uses `{word}`: {why}")
        if "reference" in word.lower():
            out.append(f"uses `{word}`: the exercise's reference answer")
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        modules = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
        )
        for m in modules:
            if any(m == s or m.startswith(s + ".") for s in SUSPICIOUS_MODULES):
                out.append(f"imports `{m}` inside the function")
    dotted = (
        _dotted(node) if isinstance(node, (ast.Attribute, ast.Name, ast.Call)) else None
    )
    if dotted:
        head, _, rest = dotted.partition(".")
        full = imports.get(head)
        if full:
            full = f"{full}.{rest}" if rest else full
            if full.startswith("diffusion_lib.exercises"):
                out.append(f"uses `{dotted}`, the checker's own module")
            name = _object_name(_resolve(full))
            if name and name in forbidden:
                out.append(
                    f"calls `{dotted}` ({name}), whose result is the reference's answer"
                )
    return out


# ------------------------------------------------------------------ the two sandboxes


def hidden_paths(submissions, out_dir, root, extra=()) -> list[Path]:
    """What a graded notebook must not see: the submissions (other students'), the
    grades, the course's build folder (the answer key), and anything else named."""
    paths = [
        Path(submissions),
        Path(out_dir),
        Path(root) / "_build",
        LIBRARY.parent / "_build",
        *map(Path, extra),
    ]
    return list(dict.fromkeys(p.resolve() for p in paths))


def run_notebook(
    path,
    mode: str = "quick",
    timeout: float = 600.0,
    hide=(),
    memory: int | None = None,
    threads: int | None = None,
    isolate: bool = True,
) -> dict:
    """Run a notebook top to bottom in a fresh kernel, in a sandbox (see
    diffusion_lib.sandbox). Returns {"seconds", "timed_out", "errors": [(cell index,
    error name, message)], "failed": why it could not run, "isolated"}."""
    with tempfile.TemporaryDirectory(prefix="grade-run-") as work:
        work = Path(work)
        shutil.copyfile(path, work / "notebook.ipynb")
        env = {"DIFFUSION_MODE": mode, HEADLESS: "1"}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        limits = sandbox.Limits(
            seconds=timeout, memory_bytes=memory or sandbox.Limits().memory_bytes
        )
        box = sandbox.start(
            [
                sys.executable,
                "-I",
                "-m",
                "diffusion_lib.grading",
                "_run",
                "notebook.ipynb",
            ],
            work,
            hide,
            limits,
            env,
            isolate,
        )
        status, timed_out = box.wait()
        seconds = min(box.elapsed(), timeout)
        run = {
            "seconds": seconds,
            "timed_out": timed_out,
            "errors": [],
            "failed": "",
            "isolated": box.isolated,
        }
        if timed_out:
            return run
        executed = work / "executed.ipynb"
        try:
            if executed.stat().st_size > MAX_NOTEBOOK_BYTES * 4:
                raise ValueError("its outputs are too large")
            nb = nbformat.reads(executed.read_text(errors="replace"), as_version=4)
        except (OSError, ValueError, nbformat.ValidationError) as err:
            tail = " ".join(box.output().strip().splitlines()[-3:])
            run["failed"] = tail or f"exit status {status} ({err})"
            return run
        run["errors"] = [
            (i, str(out.get("ename", ""))[:100], str(out.get("evalue", ""))[:300])
            for i, cell in enumerate(nb.cells)
            if cell.get("cell_type") == "code"
            for out in cell.get("outputs", [])
            if out.get("output_type") == "error"
        ]
        return run


def _execute(path) -> None:
    """(inside the sandbox) Run every cell, going on after errors; save the result."""
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=None,
        kernel_name="python3",
        allow_errors=True,
        resources={"metadata": {"path": str(path.parent)}},
    )
    try:
        client.execute()
    finally:
        nbformat.write(nb, path.with_name("executed.ipynb"))


def check_functions(
    nb,
    exercises_to_check: dict[str, str],
    seed: int,
    hide=(),
    memory: int | None = None,
    seconds: float = HARNESS_SECONDS,
) -> dict:
    """Check each exercise's function of a student notebook in the harness: {exercise:
    (status, points, message, calls)}. `exercises_to_check` maps each exercise to the
    expression that names its function (the handout's)."""
    import torch

    from . import exercises

    names = list(exercises_to_check)
    gen = torch.Generator().manual_seed(seed)
    trials = {
        n: [exercises.REGISTRY[n].make_inputs(gen) for _ in range(TRIALS)]
        for n in names
    }
    job_defs = definitions(nb)
    results, todo = {}, list(range(len(names)))
    while todo:  # one harness for all; restarted after one that runs past its limit
        with tempfile.TemporaryDirectory(prefix="grade-check-") as work:
            work = Path(work)
            (work / "out").mkdir()
            job = {
                "definitions": job_defs,
                "exercises": [
                    {
                        "name": names[k],
                        "index": k,
                        "function": exercises_to_check[names[k]],
                        "trials": trials[names[k]],
                        # called at any depth (through a class or a helper of the
                        # library) these still hand back the reference's answer
                        "watch": sorted(_wrapped(names[k])),
                    }
                    for k in todo
                ],
            }
            torch.save(job, work / "job.pt")
            limits = sandbox.Limits(
                seconds=seconds * len(todo) + STARTUP_SECONDS,
                memory_bytes=memory or sandbox.Limits().memory_bytes,
            )
            box = sandbox.start(
                [sys.executable, "-I", "-m", "diffusion_lib.grading", "_harness"],
                work,
                hide,
                limits,
                {"OMP_NUM_THREADS": "1"},
            )
            current, since = None, box.elapsed()
            while box.poll() is None:
                started = _progress(work)
                if started != current:
                    current, since = started, box.elapsed()
                allowed = seconds if current is not None else seconds + STARTUP_SECONDS
                if box.elapsed() - since > allowed:  # one exercise, or the definitions
                    break
                if box.elapsed() > limits.seconds:
                    break
                time.sleep(0.05)
            box.wait(0)
            for k in list(todo):
                result = _read_result(work / "out" / f"{k}.pt")
                if result is not None:
                    results[names[k]] = result
                    todo.remove(k)
            stuck = _progress(work)
            if todo and stuck in todo:  # the one that was running when it stopped
                results[names[stuck]] = {
                    "failure": (
                        f"ran past the time limit ({seconds:g} s for {TRIALS} calls)"
                    )
                }
                todo.remove(stuck)
            elif todo:  # the harness died (or hung) before the next exercise started
                why = " ".join(box.output().strip().splitlines()[-2:])[-300:]
                if stuck is None and box.elapsed() >= seconds + STARTUP_SECONDS:
                    why = (
                        "Python, the library and the notebook's definitions did not "
                        f"load in {seconds + STARTUP_SECONDS:g} s"
                    )
                for k in todo:
                    results[names[k]] = {
                        "failure": "the check could not run "
                        f"({why or 'the harness stopped'})"
                    }
                todo = []
    out = {}
    for name in names:
        ex = exercises.REGISTRY[name]
        r = results[name]
        calls = [str(c) for c in r.get("calls", [])][:50]
        if "failure" in r:
            message = str(r["failure"])[:1000]
            status = "not attempted" if message.startswith("not attempted") else "wrong"
            out[name] = (status, 0, message, calls, str(r.get("origin", "")))
            continue
        message = None
        for i, kwargs in enumerate(trials[name]):
            want = ex.reference(**copy.deepcopy(kwargs))
            message = exercises.verdict(ex, r["outputs"][i], want, kwargs, i)
            if message:
                break
        if message:
            out[name] = ("wrong", 0, message, calls, str(r.get("origin", "")))
        else:
            out[name] = (
                "passed",
                1,
                f"matches the reference on {TRIALS} random inputs "
                "drawn at grading time",
                calls,
                str(r.get("origin", "")),
            )
    return out


def _progress(work: Path) -> int | None:
    try:
        text = (work / "progress").read_text().split()
        return int(text[-1]) if text else None
    except (OSError, ValueError):
        return None


def _read_result(path: Path):
    """A harness result, read with torch.load(weights_only=True) (no code runs); None
    if it is missing, and a failure if it is malformed."""
    import torch

    try:
        if path.stat().st_size > 512 * 2**20:
            return {"failure": "the function's outputs are too large to read"}
    except OSError:
        return None
    try:
        r = torch.load(path, weights_only=True)
    except Exception as err:
        return {
            "failure": "the function's outputs could not be read "
            f"({type(err).__name__})"
        }
    if not isinstance(r, dict):
        return {"failure": "the harness's result was malformed"}
    if "failure" in r and isinstance(r["failure"], str):
        return r
    if not isinstance(r.get("outputs"), list) or len(r["outputs"]) != TRIALS:
        return {"failure": "the harness's result was malformed"}
    return r


def _plain(x, depth=0):
    """An output as tensors, numbers, strings and containers of them (what the grader
    can read back without running code); raises TypeError for anything else."""
    import torch

    if depth > 20:
        raise TypeError("an output nested more than 20 levels deep")
    if torch.is_tensor(x):
        if x.numel() > 50_000_000:
            raise TypeError(f"a tensor of {x.numel():,} values")
        return x.detach().cpu().clone()
    if x is None or isinstance(x, (bool, int, float, str, complex)):
        return x
    if isinstance(x, (list, tuple)):
        return (
            type(x)(_plain(v, depth + 1) for v in x)
            if type(x) in (list, tuple)
            else tuple(_plain(v, depth + 1) for v in x)
        )
    if isinstance(x, dict):
        return {
            k if isinstance(k, (str, int)) else str(k): _plain(v, depth + 1)
            for k, v in x.items()
        }
    raise TypeError(f"a {type(x).__name__}")


def _harness(work=".") -> None:
    """(inside the sandbox) Run the notebook's definitions, call each exercise's
    function on the grader's inputs, save the outputs for the grader to compare."""
    import builtins

    import torch

    from .exercises import run_student

    work = Path(work)
    job = torch.load(work / "job.pt", weights_only=False)  # written by the grader
    (work / "job.pt").unlink()
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    for cell, source in job["definitions"]:
        try:
            exec(compile(source, f"<cell {cell}>", "exec"), namespace)
        except BaseException:  # noqa: S110 - a failing definition: the check says so
            pass
    progress = open(work / "progress", "a")
    for ex in job["exercises"]:
        progress.write(f"{ex['index']}\n")
        progress.flush()
        result = _check_one(namespace, ex, run_student)
        try:
            torch.save(result, work / "out" / f"{ex['index']}.pt")
        except Exception as err:
            torch.save(
                {"failure": f"the outputs could not be saved ({err})"},
                work / "out" / f"{ex['index']}.pt",
            )


def _check_one(namespace, ex, run_student) -> dict:
    expr = ex["function"]
    try:
        fn = eval(expr, namespace)
    except BaseException as err:
        return {
            "failure": f"the function `{expr}` that the handout asks for is not "
            f"defined in the notebook ({type(err).__name__}: {err})"
        }
    if not callable(fn):
        return {"failure": f"`{expr}` is a {type(fn).__name__}, not a function"}
    code = getattr(fn, "__code__", None)
    if code is not None and code.co_filename.startswith("<cell "):
        origin = "notebook"
    else:
        origin = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')}"
    calls, outputs, watch = set(), [], set(ex.get("watch", ()))

    def hook(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(str(LIBRARY)):
            back = frame.f_back
            if back is not None and back.f_code.co_filename.startswith("<cell "):
                calls.add(_qualname(frame))
            elif watch and (name := _qualname(frame)) in watch:
                calls.add(name)  # reached through another library function

    for i, kwargs in enumerate(ex["trials"]):
        sys.setprofile(hook)
        try:
            got, failure = run_student(fn, copy.deepcopy(kwargs))
        finally:
            sys.setprofile(None)
        if failure is not None:
            return {"failure": failure, "calls": sorted(calls), "origin": origin}
        try:
            outputs.append(_plain(got))
        except TypeError as err:
            return {
                "failure": f"trial {i + 1}: the function returned {err}, not a "
                "tensor, a number, a string or a list, tuple or dict of them",
                "calls": sorted(calls),
                "origin": origin,
            }
    return {"outputs": outputs, "calls": sorted(calls), "origin": origin}


# ---------------------------------------------------------------- finding the notebooks


@dataclass
class Found:
    """A student folder's notebooks: the gradable ones, and what else was there."""

    gradable: dict  # chapter file name -> path
    refused: dict  # chapter file name -> why
    notes: list  # (notebook as found, what it is)


def survey(folder: Path, chapters: dict) -> Found:
    """What a student folder holds, against the course's chapter file names."""
    found = Found({}, {}, [])
    lower = {name.lower(): name for name in chapters}
    stems = {re.sub(r"[^a-z0-9]", "", Path(n).stem.lower()): n for n in chapters}
    for path in sorted(_walk(folder, depth=3)):
        rel = path.relative_to(folder).as_posix()
        name = path.name
        if ".ipynb_checkpoints" in rel or path.is_dir() and not path.is_symlink():
            continue
        if not name.lower().endswith(".ipynb"):
            found.notes.append((rel, "not a notebook, not graded"))
            continue
        if path.is_symlink():
            target = name if name in chapters else lower.get(name.lower())
            why = "refused: a symbolic link, not a file (hand in the notebook itself)"
            if target:
                found.refused[target] = f"{rel}: {why}"
            else:
                found.notes.append((rel, why))
            continue
        if path.parent != folder:
            match = chapters.get(name) and name or lower.get(name.lower())
            what = (
                f"one folder too deep (move it to the student's folder as {match})"
                if match
                else "in a sub-folder, not a chapter of the course"
            )
            found.notes.append((rel, what))
            if match and match not in found.gradable:
                found.refused.setdefault(match, f"found only as {rel}: {what}")
            continue
        if name in chapters:
            why = _unreadable(path)
            if why:
                found.refused[name] = f"{rel}: refused: {why}"
            else:
                found.gradable[name] = path
                found.refused.pop(name, None)
            continue
        match = lower.get(name.lower()) or stems.get(
            re.sub(r"[^a-z0-9]", "", Path(name).stem.lower())
        )
        if match:
            what = f"misnamed: the chapter's file is {match} (rename it)"
            found.notes.append((rel, what))
            found.refused.setdefault(match, f"found only as {rel}: {what}")
        else:
            found.notes.append((rel, "not a chapter of the course, not graded"))
    for name, path in found.gradable.items():
        title = _title(path)
        want = chapters[name]["title"]
        if title and want and title != want:
            found.notes.append(
                (
                    name,
                    f"its title is {title!r}, not {want!r}: is it the right chapter?",
                )
            )
    return found


def _walk(folder: Path, depth: int):
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        path = Path(entry.path)
        yield path
        if depth > 1 and entry.is_dir(follow_symlinks=False):
            yield from _walk(path, depth - 1)


def _unreadable(path: Path) -> str | None:
    try:
        if path.stat().st_size > MAX_NOTEBOOK_BYTES:
            return f"larger than {MAX_NOTEBOOK_BYTES // 2**20} MB"
        nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
    except PermissionError:
        return "the file cannot be read (permissions)"
    except (OSError, UnicodeDecodeError) as err:
        return f"the file cannot be read ({type(err).__name__})"
    except Exception as err:
        return f"not a valid notebook ({type(err).__name__}: {str(err)[:120]})"
    return None


def _title(path: Path) -> str | None:
    try:
        nb = nbformat.read(path, as_version=4)
        return nb.cells[0].source.splitlines()[0].lstrip("# ").strip()
    except Exception:
        return None


# ---------------------------------------------------------------------------- grading


def grade(
    submissions,
    out_dir,
    mode="quick",
    timeout=600.0,
    root=None,
    jobs=1,
    verbose=True,
    memory=None,
    chapters=None,
    hide=(),
    restart=False,
    seed=None,
    check_seconds=HARNESS_SECONDS,
) -> dict:
    """Grade every student folder in `submissions` against the course's exercises,
    `jobs` notebooks at a time; write one JSON file per student as each finishes, and
    grades.csv and summary.md after each. Returns {"marks": [Mark], "runs": [one dict
    per notebook run], "isolated": bool, "resumed": [students not graded again]}."""
    submissions, out_dir = Path(submissions), Path(out_dir)
    _validate(timeout, jobs, memory, mode)
    if not submissions.is_dir():
        raise FileNotFoundError(f"no folder of submissions at {submissions}")
    entries = sorted(p for p in submissions.iterdir() if not p.name.startswith("."))
    students = [p for p in entries if p.is_dir() or p.is_symlink()]
    if not students:
        raise ValueError(
            f"{submissions} holds no student folders; expected "
            f"{submissions}/<student>/<chapter notebook>.ipynb"
        )
    course = {}
    for p in course_notebooks(root):
        nb = nbformat.read(p, as_version=4)
        course[p.name] = {
            "exercises": exercise_names(nb),
            "functions": checked_functions(nb),
            "title": _title(p),
        }
    if chapters:
        unknown = [c for c in chapters if c not in course]
        if unknown:
            raise ValueError(
                f"not chapters of the course: {unknown}; expected some of "
                f"{sorted(course)}"
            )
        assigned = list(chapters)
    else:  # every chapter some student handed in (misnamed or misplaced included)
        handed_in = set()
        for s in students:
            if not s.is_symlink():
                found = survey(s, course)
                handed_in |= set(found.gradable) | set(found.refused)
        assigned = [n for n in course if n in handed_in]
    settings = Settings(
        mode,
        float(timeout),
        int(memory or Settings.memory),
        tuple(assigned),
        float(check_seconds),
    )
    hide = hidden_paths(submissions, out_dir, root or LIBRARY.parent, hide)
    isolated = sandbox.why_not_isolated() is None
    if not isolated:
        print(
            f"warning: the notebooks run without isolation: "
            f"{sandbox.why_not_isolated()}. They can read and write what this user "
            "can (other students' folders, the answer key, the grades): grade in a "
            "container or a virtual machine.",
            file=sys.stderr,
            flush=True,
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    state = out_dir / "students"
    state.mkdir(exist_ok=True)
    _keep_previous(out_dir)
    seed = secrets.randbits(62) if seed is None else seed
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    lock, done, resumed = threading.Lock(), {}, []

    for folder in students:  # what an earlier run already graded, unchanged
        saved = _load_state(state, folder.name)
        if (
            saved
            and not restart
            and saved.get("fingerprint") == _fingerprint(folder, settings)
        ):
            done[folder.name] = saved
            resumed.append(folder.name)

    def grade_student(folder: Path) -> None:
        record = {
            "student": folder.name,
            "fingerprint": _fingerprint(folder, settings),
            **_grade_folder(
                folder, course, assigned, settings, hide, seed, threads, verbose
            ),
        }
        with lock:
            done[folder.name] = record
            _write_atomic(state / _state_name(folder.name), json.dumps(record))
            _write_reports(done, out_dir, isolated)

    todo = [s for s in students if s.name not in done]
    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    try:  # stopped (Ctrl-C, an error): no new student starts; the finished are saved
        for future in [pool.submit(grade_student, s) for s in todo]:
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    _write_reports(done, out_dir, isolated)
    marks = [Mark(**m) for s in sorted(done) for m in done[s]["marks"]]
    runs = [r for s in sorted(done) for r in done[s]["runs"]]
    return {
        "marks": marks,
        "runs": runs,
        "isolated": isolated,
        "resumed": resumed,
        "seed": seed,
    }


def _validate(timeout, jobs, memory, mode) -> None:
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not (math.isfinite(timeout) and 0 < timeout <= 86400)
    ):
        raise ValueError(
            f"timeout must be a number of seconds in (0, 86400], got {timeout!r}"
        )
    if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= 64:
        raise ValueError(f"jobs must be a whole number from 1 to 64, got {jobs!r}")
    if memory is not None and (
        isinstance(memory, bool) or not isinstance(memory, int) or memory < 2**30
    ):
        raise ValueError(f"memory must be at least 1 GiB (in bytes), got {memory!r}")
    if mode not in ("quick", "cpu", "gpu"):
        raise ValueError(f"mode must be quick, cpu or gpu, got {mode!r}")


def _grade_folder(
    folder, course, assigned, settings, hide, seed, threads, verbose
) -> dict:
    """Marks and runs of one student folder (every assigned chapter gets rows)."""
    student, marks, runs = folder.name, [], []

    def rows(notebook, status, message):
        for ex in course[notebook]["exercises"]:
            marks.append(asdict(Mark(student, notebook, ex, status, 0, message)))

    if folder.is_symlink():
        why = "refused: the student folder is a symbolic link, not a folder"
        for notebook in assigned:
            rows(notebook, "refused", why)
        runs.append({"student": student, "notebook": "", "note": why})
        return {"marks": marks, "runs": runs}
    found = survey(folder, course)
    for rel, what in found.notes:
        runs.append({"student": student, "notebook": rel, "note": what})
    for notebook in assigned:
        if notebook in found.gradable:
            run, nb_marks = _grade_notebook(
                student,
                notebook,
                found.gradable[notebook],
                course[notebook],
                settings,
                hide,
                seed,
                threads,
            )
            runs.append(run)
            marks += [asdict(m) for m in nb_marks]
            if verbose:
                got = sum(m.points for m in nb_marks)
                print(
                    f"{student}/{notebook}: {got}/{len(nb_marks)} "
                    f"({run['seconds']:.0f} s)",
                    flush=True,
                )
        elif notebook in found.refused:
            rows(notebook, "refused", found.refused[notebook])
        else:
            seen = ", ".join(rel for rel, _ in found.notes) or "no notebook"
            rows(notebook, "missing", f"notebook missing (found: {seen})")
    if not assigned and not found.notes:
        runs.append({"student": student, "notebook": "", "note": "no notebook found"})
    return {"marks": marks, "runs": runs}


def _grade_notebook(
    student, notebook, path, chapter, settings, hide, seed, threads
) -> tuple[dict, list[Mark]]:
    nb = nbformat.read(path, as_version=4)
    run = run_notebook(
        path, settings.mode, settings.timeout, hide, settings.memory, threads
    )
    run = {"student": student, "notebook": notebook, **run}
    functions = {ex: chapter["functions"].get(ex) for ex in chapter["exercises"]}
    mine = checked_functions(nb)
    defined = {n for _, s in definitions(nb) for n in _names_defined(s)}
    for ex, expr in functions.items():  # the handout's name; the student's if renamed
        alt = mine.get(ex)
        if (
            expr not in defined
            and alt
            and re.fullmatch(r"[A-Za-z_]\w*", alt or "")
            and alt in defined
        ):
            functions[ex] = alt
    sub_seed = int.from_bytes(
        hashlib.sha256(f"{seed}/{notebook}".encode()).digest()[:7], "big"
    )
    from .exercises import REGISTRY

    checked = check_functions(
        nb, functions, sub_seed, hide, settings.memory, settings.check_seconds
    )
    marks = []
    for ex, expr in functions.items():
        status, points, message, calls, origin = checked[ex]
        reasons = suspicions(nb, ex, expr, _wrapped(ex)) if expr else []
        wrapped = _wrapped(ex) | {_object_name(REGISTRY[ex].reference)}
        reasons += [
            f"calls {c}, whose result is the reference's answer"
            for c in calls
            if c in wrapped or ".exercises." in c
        ]
        if origin not in ("", "notebook") and status != "not attempted":
            reasons.append(
                f"the function checked is {origin}, not one written in the notebook"
            )
        reasons = list(dict.fromkeys(reasons))
        if reasons and status in ("passed", "wrong"):
            verdict = (
                "its outputs match the reference"
                if status == "passed"
                else f"its outputs are wrong anyway ({message[:200]})"
            )
            status, points = "flagged", 0
            message = (
                "flagged for the teacher: " + "; ".join(reasons) + f". ({verdict};"
                " 0 points until the teacher decides)"
            )
        elif status != "passed" and (run["timed_out"] or run["failed"]):
            message += (
                " (the notebook also ran past the time limit)"
                if run["timed_out"]
                else f" (the notebook could not run: {run['failed'][:200]})"
            )
        marks.append(Mark(student, notebook, ex, status, points, message))
    return run, marks


def _names_defined(source: str) -> set[str]:
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


_WRAPPED: dict = {}


def _wrapped(exercise: str) -> set[str]:
    if exercise not in _WRAPPED:
        from .exercises import REGISTRY

        _WRAPPED[exercise] = wrapped_functions(REGISTRY[exercise])
    return _WRAPPED[exercise]


# ------------------------------------------------------------------ state and reports


def _state_name(student: str) -> str:
    return (
        hashlib.sha256(student.encode("utf-8", "surrogateescape")).hexdigest()[:24]
        + ".json"
    )


def _load_state(state: Path, student: str) -> dict | None:
    try:
        record = json.loads((state / _state_name(student)).read_text())
        return record if record.get("student") == student else None
    except (OSError, ValueError):
        return None


def _fingerprint(folder: Path, settings: Settings) -> str:
    """A hash of everything in a student folder (not following links) and of the
    grading settings: unchanged, the student is not graded again."""
    h = hashlib.sha256(settings.key().encode())
    h.update(_checker_hash().encode())
    for path in sorted(_walk(folder, depth=4)) if not folder.is_symlink() else []:
        h.update(path.relative_to(folder).as_posix().encode("utf-8", "surrogateescape"))
        try:
            if path.is_file() and not path.is_symlink():
                h.update(hashlib.sha256(path.read_bytes()).digest())
            elif path.is_symlink():
                h.update(os.readlink(path).encode("utf-8", "surrogateescape"))
        except OSError:
            h.update(b"unreadable")
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def _checker_hash() -> str:
    """A hash of the checkers and the grader: changed, every student is graded again."""
    h = hashlib.sha256()
    for path in sorted(LIBRARY.joinpath("exercises").glob("*.py")) + [Path(__file__)]:
        h.update(path.read_bytes())
    return h.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _keep_previous(out_dir: Path) -> None:
    """Move an earlier run's grades.csv and summary.md to previous/ (kept, not lost)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in ("grades.csv", "summary.md"):
        old = out_dir / name
        if old.exists():
            keep = out_dir / "previous"
            keep.mkdir(exist_ok=True)
            target = keep / f"{Path(name).stem}-{stamp}{Path(name).suffix}"
            k = 1
            while target.exists():
                target = keep / f"{Path(name).stem}-{stamp}-{k}{Path(name).suffix}"
                k += 1
            os.replace(old, target)


FORMULA = re.compile(r"^[=+\-@\t\r\uff1d\uff0b\uff0d\uff20]")


def csv_cell(value) -> str:
    """A value as a CSV cell that no spreadsheet runs as a formula: text that starts
    with =, +, -, @, a tab or a carriage return (or their full-width forms) gets a
    leading apostrophe, as OWASP advises."""
    text = str(value)
    return "'" + text if FORMULA.match(text.lstrip(" ")) else text


def md_text(value, limit: int = 500) -> str:
    """Text that cannot break a Markdown table or list: one line, pipes, backticks,
    HTML and emphasis escaped."""
    text = " ".join(str(value).split())[:limit]
    text = re.sub(r"([\\`*_\[\]<>|#!~])", r"\\\1", text)
    return text


def _write_reports(done: dict, out_dir: Path, isolated: bool) -> None:
    marks = [Mark(**m) for s in sorted(done) for m in done[s]["marks"]]
    runs = [r for s in sorted(done) for r in done[s]["runs"]]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(list(Mark.__dataclass_fields__))
    for m in marks:
        writer.writerow([csv_cell(v) for v in dataclasses.astuple(m)])
    _write_atomic(out_dir / "grades.csv", buffer.getvalue())
    _write_atomic(
        out_dir / "summary.md",
        summary_text(marks, runs, isolated, students=sorted(done)),
    )


def summary_text(
    marks: list[Mark], runs: list[dict], isolated: bool = True, students=None
) -> str:
    """A readable report: points per student and notebook, then flags for the teacher,
    then what went wrong in each notebook that did not get full marks."""
    students = sorted(
        set(students or []) | {m.student for m in marks} | {r["student"] for r in runs}
    )
    notebooks = sorted({m.notebook for m in marks})
    lines = ["# Grades", ""]
    if not isolated:
        lines += [
            "**Warning:** the notebooks ran without isolation (see the grader's "
            "output): they could read other students' folders and the answer key.",
            "",
        ]
    lines += [
        "| student | " + " | ".join(md_text(n) for n in notebooks) + " | total |",
        "|---" * (len(notebooks) + 2) + "|",
    ]
    for s in students:
        cells, total, top = [], 0, 0
        for n in notebooks:
            mine = [m for m in marks if m.student == s and m.notebook == n]
            got = sum(m.points for m in mine)
            total, top = total + got, top + len(mine)
            cells.append(f"{got}/{len(mine)}" if mine else "—")
        lines.append(
            f"| {md_text(s, 100)} | " + " | ".join(cells) + f" | {total}/{top} |"
        )
    flagged = [m for m in marks if m.status == "flagged"]
    if flagged:
        lines += ["", "## Flagged for the teacher", ""]
        lines += [
            f"- **{md_text(m.student, 100)} / {md_text(m.notebook, 100)} / "
            f"{md_text(m.exercise, 100)}**: {md_text(m.message)}"
            for m in flagged
        ]
    lines += ["", "## Details", ""]
    for run in runs:
        s, n = md_text(run["student"], 100), md_text(run.get("notebook", ""), 200)
        if "note" in run:
            lines.append(f"- **{s}** / {n}: {md_text(run['note'])}")
            continue
        problems = [
            m
            for m in marks
            if m.student == run["student"]
            and m.notebook == run["notebook"]
            and m.status not in ("passed", "flagged")
        ]
        errors = run.get("errors", [])
        if not problems and not errors and not run.get("timed_out"):
            continue
        lines.append(f"- **{s} / {n}** ({run['seconds']:.0f} s)")
        if run.get("timed_out"):
            lines.append("  - the notebook ran past the time limit and was stopped")
        lines += [
            f"  - cell {i} raised {md_text(name, 100)}: {md_text(text, 300)}"
            for i, name, text in errors
        ]
        lines += [
            f"  - {md_text(m.exercise, 100)}: {m.status}: {md_text(m.message)}"
            for m in problems
        ]
    missing = [m for m in marks if m.status in ("missing", "refused")]
    shown = {(m.student, m.notebook) for m in missing}
    for s, n in sorted(shown):
        m = next(m for m in missing if (m.student, m.notebook) == (s, n))
        lines.append(
            f"- **{md_text(s, 100)} / {md_text(n, 100)}**: {m.status}: "
            f"{md_text(m.message)}"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # internal: what runs inside the sandboxes
    if sys.argv[1] == "_run":
        _execute(sys.argv[2])
    elif sys.argv[1] == "_harness":
        _harness()

"""Handouts and grading for a class.

Every chapter ends with exercises: a stub code cell (`raise NotImplementedError`) that
calls `exercises.check(name, fn)`, followed by a folded worked solution (a Markdown cell
holding a `{solution}` directive). This module turns the course's notebooks into
student handouts and grades what the students hand back, by running their notebooks
with the same checkers:

    python -m diffusion_lib.classroom handouts --out _build/handouts
    python -m diffusion_lib.classroom key --out _build/key     # solutions filled in
    python -m diffusion_lib.classroom grade SUBMISSIONS --out _build/grades

SUBMISSIONS holds one folder per student with that student's notebooks, named as the
course's (`SUBMISSIONS/ada/02_forward_process.ipynb`), the layout nbgrader uses for
submitted assignments. Grading runs each notebook top to bottom offline in a fresh
kernel (quick mode by default) with a time limit, records every `check` call, and
writes `grades.csv` (one row per student, notebook and exercise) and `summary.md`.
A cell that raises is reported and the run goes on; a notebook that runs past the
time limit is stopped and reported. Students' code runs with your permissions: grade
on a machine or container you do not mind them reaching.

The chapters are found from the book's table of contents (`_toc.yml`), so a new
chapter is picked up without changing this module.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import nbformat

from .setup import HEADLESS

LOG_VARIABLE = "DIFFUSION_GRADING_LOG"  # exercises.check appends its verdicts here
SOLUTION = re.compile(r"^:{3,}\{solution\}")
CHECK_CALL = re.compile(r"""\bcheck\(\s*["']([\w.]+)["']""")
CHECK_IMPORT = "from diffusion_lib.exercises import check"
CODE_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
HANDOUT_NOTE = (
    "**Student version.** The worked solutions are removed. Each exercise cell calls "
    "an automatic checker: replace the `raise NotImplementedError`, run the cell, and "
    "read what it says."
)


def repo_root() -> Path:
    """The course repository this library was installed from (it holds _toc.yml)."""
    return Path(__file__).resolve().parent.parent


def course_notebooks(root: Path | None = None) -> list[Path]:
    """The chapters: the notebooks of notebooks/ in the book's table of contents, in
    order."""
    import yaml

    root = Path(root or repo_root())
    toc_path = root / "_toc.yml"
    if not toc_path.exists():
        raise FileNotFoundError(
            f"no _toc.yml in {root}: pass the course repository's root folder"
        )
    files = []

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(yaml.safe_load(toc_path.read_text()))
    paths = [root / f"{f}.ipynb" for f in files if f.startswith("notebooks/")]
    return [p for p in paths if p.exists()]


def is_solution(cell) -> bool:
    return cell.cell_type == "markdown" and bool(SOLUTION.match(cell.source))


def exercise_names(nb) -> list[str]:
    """The exercises a notebook checks, in order (its `check("name", ...)` calls)."""
    return [
        name
        for cell in nb.cells
        if cell.cell_type == "code"
        for name in CHECK_CALL.findall(cell.source)
    ]


def clear_outputs(nb):
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def make_handout(nb):
    """A student version of a chapter: worked solutions removed, exercise stubs and
    their checkers kept, outputs empty, a note saying what the student version is."""
    out = clear_outputs(copy.deepcopy(nb))
    out.cells = [cell for cell in out.cells if not is_solution(cell)]
    note = nbformat.v4.new_markdown_cell(HANDOUT_NOTE)
    note.id = "handout-note"
    out.cells.insert(1, note)
    out.metadata["diffusion_course"] = {"version": "handout"}
    return out


def fill_solutions(nb):
    """The answer key: each exercise stub's code replaced by the worked solution that
    follows it (the stub's `check` call kept), outputs empty."""
    out = clear_outputs(copy.deepcopy(nb))
    for i, cell in enumerate(out.cells):
        if not is_solution(cell):
            continue
        stub = out.cells[i - 1] if i > 0 else None
        blocks = CODE_BLOCK.findall(cell.source)
        if stub is None or stub.cell_type != "code" or CHECK_IMPORT not in stub.source:
            raise ValueError(
                f"solution cell {i} does not follow an exercise cell that imports "
                f"the checker ({CHECK_IMPORT!r})"
            )
        if not blocks:
            raise ValueError(f"solution cell {i} holds no ```python code block")
        checker = stub.source[stub.source.index(CHECK_IMPORT) :]
        stub.source = blocks[0].rstrip() + "\n\n\n" + checker
    out.metadata["diffusion_course"] = {"version": "key"}
    return out


def write_versions(kind: str, out_dir, root=None) -> list[Path]:
    """Write the handout ("handouts") or answer-key ("key") version of every chapter."""
    makers = {"handouts": make_handout, "key": fill_solutions}
    if kind not in makers:
        raise ValueError(f"unknown version {kind!r}; expected one of {sorted(makers)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in course_notebooks(root):
        nb = makers[kind](nbformat.read(path, as_version=4))
        nbformat.write(nb, out_dir / path.name)
        written.append(out_dir / path.name)
    return written


# ------------------------------------------------------------------ instructor guide

GOALS = re.compile(
    r"\*\*What you will learn\*\*\s*\n(.*?)(?:\n\s*\n(?![-*] )|\Z)", re.S
)
CHECKPOINT_USE = re.compile(r"""(?:load_pretrained|manifest)\(\s*["']([\w-]+)["']""")
# what the instructor guide prints from each shipped checkpoint's manifest:
# (what, path of keys into manifest["metrics"])
LDM_GROUPS = ("one object, seen", "two objects, seen", "one object, held out",
              "two objects, held out")  # fmt: skip
PRIOR_GROUPS = ("unseen captions, seen compositions", "held-out compositions")
# finetune.OLD_GROUPS
NEW_WORD_OLD_GROUPS = ("one object, training captions", "two objects, new captions")
HEADLINES = {
    "shapes-evaluator": [("test accuracy, all attributes", ("test_accuracy", "joint"))],
    "shapes-ddpm": [
        ("prompt accuracy, training prompts", ("train_prompts", "joint")),
        ("prompt accuracy, held-out pairs", ("held_out_prompts", "joint")),
        ("FID, training prompts", ("train_prompts", "fid")),
        ("FID, real vs real", ("real_vs_real", "fid")),
    ],
    "scenes-vae": [
        ("PSNR (dB), held out", ("reconstruction", "holdout", "psnr_mean")),
    ],
    "scenes-clip": [
        ("zero-shot accuracy, held out", ("holdout", "zero_shot", "all")),
        (
            "text-to-image recall@1, held out",
            ("holdout", "retrieval", "text_to_image_exact"),
        ),
    ],
    "scenes-ldm": [
        (f"prompt accuracy, {g}", ("groups", g, "joint")) for g in LDM_GROUPS
    ],
    "scenes-prior": [
        (f"cosine to the true image embedding, {g}", ("groups", g, "prior"))
        for g in PRIOR_GROUPS
    ]
    + [
        (f"text embedding's cosine (baseline), {g}", ("groups", g, "text_embedding"))
        for g in PRIOR_GROUPS
    ],
    "scenes-decoder": [
        (f"mini DALL-E 2 prompt accuracy, {g}", ("groups", g, "joint"))
        for g in LDM_GROUPS
    ]
    + [
        (
            "variations keep shape and colour, one-object sources",
            ("variations", "shape_and_colour_one_object"),
        )
    ],
    "scenes-upsampler": [("PSNR gain over bicubic (dB)", ("gain_db",))],
    "scenes-lora": [
        ("new word, prompt accuracy before",
         ("before (new word, no adapter)", "concept", "joint")),
        ("new word, prompt accuracy with LoRA", ("after", "concept", "joint")),
    ]
    + [(f"{g}, with LoRA", ("after", g, "joint")) for g in NEW_WORD_OLD_GROUPS],
    "scenes-inversion": [
        ("new word, prompt accuracy, learned row", ("after", "concept", "joint")),
    ],
    "scenes-inpaint": [
        ("edited object right inside the mask", ("inpainting", "mask-conditioned UNet",
                                                  "inside")),
        ("PSNR outside the mask (dB)", ("inpainting", "mask-conditioned UNet",
                                         "psnr_outside")),
        ("RePaint (training-free): inside the mask", ("inpainting", "RePaint (U = 5)",
                                                      "inside")),
    ],
    "scenes-controlnet": [
        ("mask IoU with the control", ("control", "control + caption", "mask_iou")),
        ("prompt accuracy with the control", ("control", "control + caption", "joint")),
        ("mask IoU without ControlNet", ("control", "caption only (no ControlNet)",
                                          "mask_iou")),
    ],
}  # fmt: skip


def chapter_title(nb) -> str:
    return nb.cells[0].source.splitlines()[0].lstrip("# ").strip()


def chapter_goals(nb) -> list[str]:
    """The bullets under a chapter's "What you will learn", one string each."""
    match = GOALS.search(nb.cells[0].source)
    if not match:
        return []
    bullets = re.split(r"\n[-*] ", "\n" + match.group(1).strip())
    return [" ".join(b.split()) for b in bullets if b.strip()]


def checkpoints_used(nb) -> list[str]:
    """The shipped checkpoints a chapter loads or reads, in order of first use."""
    names = [n for c in nb.cells if c.cell_type == "code"
             for n in CHECKPOINT_USE.findall(c.source)]  # fmt: skip
    return list(dict.fromkeys(names))


def _parameters(info: dict) -> int:
    """A checkpoint's parameters: a model's count, the sum of a ControlNet's parts, or
    an adapter's trainable parameters."""
    p = info.get("parameters", info.get("trainable_parameters"))
    return sum(p.values()) if isinstance(p, dict) else p


def headline_results(name: str, directory=None) -> list[tuple[str, float]]:
    """(what, value) for a shipped checkpoint: its HEADLINES metrics, read from the
    manifest, then its size and training time."""
    from .pretrained import manifest

    info = manifest(name, directory)
    rows = []
    for what, keys in HEADLINES.get(name, []):
        value = info.get("metrics") or {}
        for key in keys:
            value = value.get(key, {}) if isinstance(value, dict) else {}
        if isinstance(value, (int, float)):
            rows.append((what, float(value)))
    rows.append(("parameters", float(_parameters(info))))
    rows.append(("training time (s), " + str(info.get("hardware", "?")),
                 float(info.get("training_seconds", float("nan")))))  # fmt: skip
    return rows


# ---------------------------------------------------------------------------- grading


@dataclass
class Mark:
    student: str
    notebook: str
    exercise: str
    status: str  # passed, wrong, not attempted, not run, notebook missing
    points: int
    message: str


def run_notebook(path, log_path, mode: str = "quick", timeout: float = 600.0,
                 threads: int | None = None) -> dict:  # fmt: skip
    """Run a notebook top to bottom in a fresh kernel (its own process group), with the
    checkers' verdicts appended to `log_path`. Returns {"seconds", "timed_out",
    "errors": [(cell index, error name, message)], "failed": why it could not run}."""
    env = {
        **os.environ,
        "DIFFUSION_MODE": mode,
        LOG_VARIABLE: str(log_path),
        HEADLESS: "1",  # no live widgets: nobody is watching (see setup.headless)
    }
    if threads:  # several notebooks at once: share the cores instead of oversubscribing
        env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "diffusion_lib.classroom", "_run", str(path)]
    start = time.perf_counter()
    proc = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the kernel joins this group: a timeout kills both
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"seconds": timeout, "timed_out": True, "errors": [], "failed": ""}
    seconds = time.perf_counter() - start
    try:
        report = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        tail = stderr.strip().splitlines()[-3:]
        return {
            "seconds": seconds,
            "timed_out": False,
            "errors": [],
            "failed": " ".join(tail) or f"exit status {proc.returncode}",
        }
    return {"seconds": seconds, "timed_out": False, "failed": "", **report}


def _execute(path) -> dict:
    """(in the child process) Execute every cell, going on after errors."""
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
    client.execute()
    errors = [
        (i, out.get("ename", ""), str(out.get("evalue", ""))[:300])
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    return {"errors": errors}


def read_log(log_path) -> dict:
    """{exercise: (passed, message)} from a checker log; the last verdict counts."""
    verdicts = {}
    if Path(log_path).exists():
        for line in Path(log_path).read_text().splitlines():
            try:
                row = json.loads(line)
                verdicts[row["name"]] = (bool(row["passed"]), str(row["message"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a damaged line (e.g. the student printed into the log)
    return verdicts


def mark_notebook(student, notebook, expected, verdicts, run) -> list[Mark]:
    """One Mark per expected exercise, from the checkers' verdicts and the run."""
    why_not_run = (
        f"the notebook ran past the time limit ({run['seconds']:.0f} s)"
        if run["timed_out"]
        else f"the notebook could not be run: {run['failed']}"
        if run["failed"]
        else "the check never ran (cell deleted, or an earlier error stopped it)"
    )
    marks = []
    for name in expected:
        if name not in verdicts:
            marks.append(Mark(student, notebook, name, "not run", 0, why_not_run))
            continue
        passed, message = verdicts[name]
        status = (
            "passed"
            if passed
            else "not attempted"
            if message.startswith("not attempted")
            else "wrong"
        )
        marks.append(Mark(student, notebook, name, status, int(passed), message))
    return marks


def grade(submissions, out_dir, mode="quick", timeout=600.0, root=None, jobs=1,
          verbose=True) -> dict:  # fmt: skip
    """Grade every student folder in `submissions` against the course's exercises,
    `jobs` notebooks at a time; write grades.csv and summary.md to out_dir. Returns
    {"marks": [Mark], "runs": [one dict per notebook run]}."""
    submissions, out_dir = Path(submissions), Path(out_dir)
    if not submissions.is_dir():
        raise FileNotFoundError(f"no folder of submissions at {submissions}")
    students = sorted(p for p in submissions.iterdir() if p.is_dir())
    if not students:
        raise ValueError(
            f"{submissions} holds no student folders; expected "
            f"{submissions}/<student>/<chapter notebook>.ipynb"
        )
    chapters = {
        p.name: exercise_names(nbformat.read(p, as_version=4))
        for p in course_notebooks(root)
    }
    submitted = [(s, p.name) for s in students for p in sorted(s.glob("*.ipynb"))]
    runs = [{"student": s.name, "notebook": n, "unknown": True}
            for s, n in submitted if n not in chapters]  # fmt: skip
    tasks = [(s, n) for s, n in submitted if n in chapters]
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None

    def run_one(task):
        folder, notebook = task
        with tempfile.TemporaryDirectory() as tmp:
            run = run_notebook(folder / notebook, Path(tmp) / "log", mode, timeout,
                               threads)  # fmt: skip
            marks = mark_notebook(folder.name, notebook, chapters[notebook],
                                  read_log(Path(tmp) / "log"), run)  # fmt: skip
        if verbose:
            print(f"{folder.name}/{notebook}: {sum(m.points for m in marks)}/"
                  f"{len(marks)} ({run['seconds']:.0f} s)", flush=True)  # fmt: skip
        return {"student": folder.name, "notebook": notebook, **run}, marks

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(pool.map(run_one, tasks))
    marks = [m for _, ms in results for m in ms]
    runs += [run for run, _ in results]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_reports(marks, runs, out_dir)
    return {"marks": marks, "runs": runs}


def write_reports(marks: list[Mark], runs: list[dict], out_dir: Path) -> None:
    with open(out_dir / "grades.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(Mark.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(m) for m in marks)
    (out_dir / "summary.md").write_text(summary_text(marks, runs))


def summary_text(marks: list[Mark], runs: list[dict]) -> str:
    """A readable report: one table of points per student and notebook, then what went
    wrong in each notebook that did not get full marks."""
    students = sorted({m.student for m in marks} | {r["student"] for r in runs})
    notebooks = sorted({m.notebook for m in marks})
    lines = [
        "# Grades",
        "",
        "| student | " + " | ".join(notebooks) + " | total |",
        "|---" * (len(notebooks) + 2) + "|",
    ]
    for s in students:
        cells, total, top = [], 0, 0
        for n in notebooks:
            mine = [m for m in marks if m.student == s and m.notebook == n]
            got = sum(m.points for m in mine)
            total, top = total + got, top + len(mine)
            cells.append(f"{got}/{len(mine)}" if mine else "—")
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {total}/{top} |")
    lines += ["", "## Details", ""]
    for run in runs:
        s, n = run["student"], run["notebook"]
        if run.get("unknown"):
            lines.append(f"- **{s} / {n}**: not a chapter of the course, not graded")
            continue
        problems = [
            m
            for m in marks
            if m.student == s and m.notebook == n and m.status != "passed"
        ]
        errors = run.get("errors", [])
        if not problems and not errors:
            continue
        lines.append(f"- **{s} / {n}** ({run['seconds']:.0f} s)")
        lines += [f"  - cell {i} raised {name}: {text}" for i, name, text in errors]
        lines += [f"  - {m.exercise}: {m.status}: {m.message}" for m in problems]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m diffusion_lib.classroom",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for kind, text in (("handouts", "student versions"), ("key", "answer keys")):
        p = sub.add_parser(kind, help=f"write the {text} of every chapter")
        p.add_argument("--out", default=f"_build/{kind}")
    p = sub.add_parser("grade", help="grade a folder of submitted notebooks")
    p.add_argument("submissions", help="a folder with one sub-folder per student")
    p.add_argument("--out", default="_build/grades")
    p.add_argument("--mode", default="quick", choices=("quick", "cpu", "gpu"))
    p.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds per notebook (default 600)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="notebooks run at once (default 1; one per two cores is about right)",
    )
    p = sub.add_parser("_run")  # internal: run one notebook (see run_notebook)
    p.add_argument("path")
    args = parser.parse_args(argv)
    if args.command == "_run":
        print(json.dumps(_execute(args.path)))
    elif args.command == "grade":
        start = time.perf_counter()
        grade(args.submissions, args.out, args.mode, args.timeout, jobs=args.jobs)
        out = Path(args.out)
        print(
            f"graded in {time.perf_counter() - start:.0f} s; wrote "
            f"{out / 'grades.csv'} and {out / 'summary.md'}"
        )
    else:
        written = write_versions(args.command, args.out)
        print(f"wrote {len(written)} notebooks to {args.out}")


if __name__ == "__main__":
    main()

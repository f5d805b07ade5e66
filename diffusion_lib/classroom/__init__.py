"""Handouts and grading for a class.

Every chapter ends with exercises: a stub code cell (`raise NotImplementedError`) that
calls `exercises.check(name, fn)`, followed by a folded worked solution (a Markdown cell
holding a `{solution}` directive). This package turns the course's notebooks into
student handouts and answer keys; diffusion_lib.grading grades what the students hand
back. The command line (classroom/__main__.py):

    python -m diffusion_lib.classroom handouts --out _build/handouts
    python -m diffusion_lib.classroom key --out _build/key     # solutions filled in
    python -m diffusion_lib.classroom grade SUBMISSIONS --out _build/grades

SUBMISSIONS holds one folder per student with that student's notebooks, named as the
course's (`SUBMISSIONS/ada/02_forward_process.ipynb`), the layout nbgrader uses for
submitted assignments. Grading (diffusion_lib.grading) runs each notebook in a sandbox
and checks each exercise's function in a separate harness, comparing its outputs with
references computed in the grader's own process, so that nothing a notebook does can
change its grade; it writes `grades.csv` and `summary.md` as each student finishes.

The chapters are found from the book's table of contents (`_toc.yml`), so a new
chapter is picked up without changing this module.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat

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
    return Path(__file__).resolve().parents[2]


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
LDM_GROUPS = (
    "one object, seen",
    "two objects, seen",
    "one object, held out",
    "two objects, held out",
)
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
        (
            "new word, prompt accuracy before",
            ("before (new word, no adapter)", "concept", "joint"),
        ),
        ("new word, prompt accuracy with LoRA", ("after", "concept", "joint")),
    ]
    + [(f"{g}, with LoRA", ("after", g, "joint")) for g in NEW_WORD_OLD_GROUPS],
    "scenes-inversion": [
        ("new word, prompt accuracy, learned row", ("after", "concept", "joint")),
    ],
    "scenes-inpaint": [
        (
            "edited object right inside the mask",
            ("inpainting", "mask-conditioned UNet", "inside"),
        ),
        (
            "PSNR outside the mask (dB)",
            ("inpainting", "mask-conditioned UNet", "psnr_outside"),
        ),
        (
            "RePaint (training-free): inside the mask",
            ("inpainting", "RePaint (U = 5)", "inside"),
        ),
    ],
    "scenes-controlnet": [
        ("mask IoU with the control", ("control", "control + caption", "mask_iou")),
        ("prompt accuracy with the control", ("control", "control + caption", "joint")),
        (
            "mask IoU without ControlNet",
            ("control", "caption only (no ControlNet)", "mask_iou"),
        ),
    ],
}


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
    names = [
        n
        for c in nb.cells
        if c.cell_type == "code"
        for n in CHECKPOINT_USE.findall(c.source)
    ]
    return list(dict.fromkeys(names))


def _parameters(info: dict) -> int:
    """A checkpoint's parameters: a model's count, the sum of a ControlNet's parts, or
    an adapter's trainable parameters."""
    p = info.get("parameters", info.get("trainable_parameters"))
    return sum(p.values()) if isinstance(p, dict) else p


def headline_results(name: str, directory=None) -> list[tuple[str, float]]:
    """(what, value) for a shipped checkpoint: its HEADLINES metrics, read from the
    manifest, then its size and training time."""
    from ..pretrained import manifest

    info = manifest(name, directory)
    rows = []
    for what, keys in HEADLINES.get(name, []):
        value = info.get("metrics") or {}
        for key in keys:
            value = value.get(key, {}) if isinstance(value, dict) else {}
        if isinstance(value, (int, float)):
            rows.append((what, float(value)))
    rows.append(("parameters", float(_parameters(info))))
    rows.append(
        (
            "training time (s), " + str(info.get("hardware", "?")),
            float(info.get("training_seconds", float("nan"))),
        )
    )
    return rows

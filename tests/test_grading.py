"""The grader against a hostile class: every cheat scores 0 or is flagged, the honest
student keeps full marks, the run stays within its limits, no report is lost."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from diffusion_lib import classroom, grading, sandbox

ISOLATED = sandbox.why_not_isolated() is None
needs_isolation = pytest.mark.skipif(
    not ISOLATED, reason=f"no sandbox on this machine: {sandbox.why_not_isolated()}"
)
NAME = "02_mini.ipynb"
EXTRACT = """def my_extract(a, t, x_shape):
    return a[t].float().reshape(-1, *[1] * (len(x_shape) - 1))"""
LOG_SNR = """def my_log_snr(alphas_cumprod):
    return torch.log(alphas_cumprod) - torch.log1p(-alphas_cumprod)"""


def exercise_cell(name, function, body):
    return (
        f"{body}\n\n\nfrom diffusion_lib.exercises import check\n\n"
        f'check("{name}", {function})'
    )


STUB_EXTRACT = exercise_cell(
    "ch02.extract",
    "my_extract",
    "def my_extract(a, t, x_shape):\n    # YOUR CODE HERE\n"
    "    raise NotImplementedError",
)
STUB_LOG_SNR = exercise_cell(
    "ch02.log_snr",
    "my_log_snr",
    "def my_log_snr(alphas_cumprod):\n    # YOUR CODE HERE\n"
    "    raise NotImplementedError",
)


def mini_course(root: Path) -> Path:
    """A course of one short chapter with two of chapter 2's exercises (so that a class
    can be graded in seconds), its answer key under _build/key as `make` writes it."""
    (root / "notebooks").mkdir(parents=True)
    (root / "_toc.yml").write_text(
        "format: jb-book\nroot: intro\nchapters:\n- file: notebooks/02_mini\n"
    )
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Chapter 2: a mini chapter\n\nText."),
        nbformat.v4.new_code_cell("import torch\nfrom diffusion_lib import schedules"),
        nbformat.v4.new_code_cell(STUB_EXTRACT),
        nbformat.v4.new_markdown_cell(
            f":::{{solution}} a\n```python\n{EXTRACT}\n```\n:::"
        ),
        nbformat.v4.new_code_cell(STUB_LOG_SNR),
        nbformat.v4.new_markdown_cell(
            f":::{{solution}} b\n```python\n{LOG_SNR}\n```\n:::"
        ),
    ]
    nbformat.write(nb, root / "notebooks" / NAME)
    classroom.write_versions("key", root / "_build" / "key", root)
    return root / "notebooks" / NAME


def notebook(*cells):
    """The mini chapter as a student hands it in: its first two cells, then `cells`."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Chapter 2: a mini chapter"),
        nbformat.v4.new_code_cell("import torch\nfrom diffusion_lib import schedules"),
    ] + [nbformat.v4.new_code_cell(c) for c in cells]
    return nb


HOLD = (
    "import ctypes, signal\n"
    "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, "
    "signal.SIGALRM})\n"
    "ctypes.PyDLL(None).sleep(10**6)"
)
HONEST = (
    exercise_cell("ch02.extract", "my_extract", EXTRACT),
    exercise_cell("ch02.log_snr", "my_log_snr", LOG_SNR),
)


def hand_in(subs: Path, student: str, nb, name=NAME) -> Path:
    path = subs / student / name
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def test_the_grader_resumes_and_keeps_the_previous_grades(tmp_path):
    """The grader killed (SIGKILL) after its first student: that student's grades are
    on disk; the next run resumes without grading them again, keeps the earlier
    grades.csv, and grades again only a student who handed in again."""
    import signal

    root = tmp_path / "course"
    mini_course(root)
    subs, out = tmp_path / "subs", tmp_path / "grades"
    hand_in(subs, "ada", notebook(*HONEST))
    hand_in(subs, "bob", notebook(STUB_EXTRACT, STUB_LOG_SNR))
    hand_in(subs, "cyd", notebook(HONEST[0], STUB_LOG_SNR))
    code = (
        "from diffusion_lib import grading\n"
        f"grading.grade({str(subs)!r}, {str(out)!r}, root={str(root)!r}, timeout=60)"
    )
    grader = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 300
    while not list((out / "students").glob("*.json")):
        assert grader.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    grader.send_signal(signal.SIGKILL)
    grader.wait()
    first = (out / "grades.csv").read_text()
    assert "ada" in first and "bob" not in first  # ada's grades were not lost
    result = grading.grade(subs, out, root=root, verbose=False, timeout=60)
    assert result["resumed"] == ["ada"]
    assert sum(m.points for m in result["marks"]) == 2 + 0 + 1
    previous = list((out / "previous").glob("grades-*.csv"))
    assert [p.read_text() for p in previous] == [first]  # kept, not overwritten
    # cyd hands in again: only cyd is graded again
    hand_in(subs, "cyd", notebook(*HONEST))
    result = grading.grade(subs, out, root=root, verbose=False, timeout=60)
    assert sorted(result["resumed"]) == ["ada", "bob"]
    assert {m.student: 0 for m in result["marks"]} and sum(
        m.points for m in result["marks"] if m.student == "cyd"
    ) == 2
    assert len(list((out / "previous").glob("grades-*.csv"))) == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--timeout", "-1"], "above 0"),
        (["--timeout", "nan"], "above 0"),
        (["--timeout", "inf"], "above 0"),
        (["--jobs", "0"], "from 1 to 64"),
        (["--jobs", "two"], "from 1 to 64"),
        (["--memory", "12Q"], "such as 8G"),
        (["--memory", "10M"], "at least 1 GiB"),
        (["--chapters", "99_nothing"], "not chapters of the course"),
    ],
)
def test_grade_options_are_checked_with_a_clear_error(tmp_path, args, message):
    (tmp_path / "subs" / "ada").mkdir(parents=True)
    subs, out = str(tmp_path / "subs"), str(tmp_path / "out")
    command = [sys.executable, "-m", "diffusion_lib.classroom", "grade", subs]
    command += ["--out", out, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_csv_cells_and_markdown_are_escaped():
    for text in ("=1+1", "+SUM(A1)", "-2", "@cmd", "\t=x", " =x", "＝1"):
        assert grading.csv_cell(text).startswith("'"), text
    assert grading.csv_cell("ada") == "ada" and grading.csv_cell(3) == "3"
    text = grading.md_text("a|b`c`\n<script>*x*")
    assert "|" not in text.replace("\\|", "") and "\n" not in text
    assert "<" not in text.replace("\\<", "")


def no_process_left(pattern: str, seconds: float = 10.0) -> bool:
    """True once no process matches `pattern` (the kernel reaps a killed namespace
    asynchronously: give it a moment, not forever)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-f", pattern], capture_output=True).stdout
        if not found:
            return True
        time.sleep(0.2)
    return False


@needs_isolation
def test_the_sandbox_hides_and_protects_and_kills_everything(outside):
    tmp_path = outside
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key.txt").write_text("the answers")
    work = tmp_path / "work"
    work.mkdir()
    code = (
        "import os, socket, subprocess, pathlib\n"
        f"print('secret', os.path.exists({str(secret / 'key.txt')!r}))\n"
        "lib = pathlib.Path(__import__('diffusion_lib').__file__).parent\n"
        "try:\n    (lib / 'planted.py').write_text('x')\n    print('lib writable')\n"
        "except OSError:\n    print('lib read-only')\n"
        "s = socket.socket(); s.settimeout(3)\n"
        "print('network', s.connect_ex(('1.1.1.1', 53)) == 0)\n"
        "open('/tmp/work/mine.txt', 'w').write('ok')\n"
        "subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        "print('pid', os.getpid())\n"
    )
    box = sandbox.start([sys.executable, "-c", code], work, hide=[secret])
    status, timed_out = box.wait(60)
    out = (work / ".stdout").read_text()
    assert box.isolated and status == 0 and not timed_out, (out, box.output())
    assert "secret False" in out and "lib read-only" in out
    assert "network False" in out and "pid 1" in out
    assert (work / "mine.txt").read_text() == "ok"
    assert no_process_left("sleep 300"), "a detached child outlived the sandbox"


def test_without_isolation_limits_and_the_kill_still_hold(tmp_path):
    """The fallback (a machine without namespaces): not isolated, said so, but the
    time limit kills detached children and the memory limit holds."""
    code = (
        "import subprocess, time\n"
        "subprocess.Popen(['sleep', '301'], start_new_session=True)\n"
        "try:\n    x = bytearray(8 * 2**30)\n"
        "except MemoryError:\n    print('no memory')\n"
        "time.sleep(300)\n"
    )
    limits = sandbox.Limits(seconds=8, memory_bytes=2 * 2**30)
    box = sandbox.start(
        [sys.executable, "-c", code], tmp_path, limits=limits, isolate=False
    )
    status, timed_out = box.wait()
    assert not box.isolated and timed_out
    assert "no memory" in (tmp_path / ".stdout").read_text()
    assert no_process_left("sleep 301"), "a detached child outlived the limit"


def test_the_wrapped_library_functions_are_found():
    assert grading._wrapped("ch02.extract") == {"diffusion_lib.schedules.extract"}
    assert grading._wrapped("ch04.ddim_step") == {"diffusion_lib.samplers.ddim_step"}
    assert grading._wrapped("ch02.log_snr") == set()  # written out in the reference


def test_the_library_function_is_found_behind_a_class_or_helper():
    """A student who hands back the library's step through its sampler object (which
    calls samplers.ddim_step inside) is flagged as one who calls it directly; one who
    writes the step out is not."""
    wrapper = (
        "from diffusion_lib import samplers\n"
        "def my_ddim(schedule, eps_hat, t, t_prev, x_t):\n"
        "    sampler = samplers.DDIMSampler(schedule, clip_sample=False)\n"
        "    return sampler.step(eps_hat, t, t_prev, x_t).prev_sample"
    )
    honest = (
        "def my_ddim(schedule, eps_hat, t, t_prev, x_t):\n"
        "    a_t = schedule.alphas_cumprod[t].item()\n"
        "    a_prev = schedule.alphas_cumprod[t_prev].item() if t_prev >= 0 else 1.0\n"
        "    x0 = (x_t - (1 - a_t) ** 0.5 * eps_hat) / a_t**0.5\n"
        "    return a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps_hat"
    )
    for code, flagged in ((wrapper, True), (honest, False)):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(code)]
        checked = grading.check_functions(nb, {"ch04.ddim_step": "my_ddim"}, seed=3)
        status, points, message, calls, origin = checked["ch04.ddim_step"]
        assert (status, points) == ("passed", 1), message
        through = "diffusion_lib.samplers.ddim_step" in calls
        assert through == flagged, calls


def test_definitions_keep_functions_and_imports_only():
    nb = notebook(
        "%matplotlib inline\nx = train_for_an_hour()\nimport math\n"
        "def my_f(a):\n    return math.sqrt(a)\nalias = my_f",
        "def helper(x):\n    return x\nprint(helper(1))",
        "def lost(x):\n    return x\nbad = (",  # a syntax error: the cell never runs
    )
    source = "\n".join(s for _, s in grading.definitions(nb))
    assert "train_for_an_hour" not in source and "print" not in source
    assert "lost" not in source
    assert "def my_f" in source and "alias = my_f" in source
    assert "def helper" in source


def test_run_notebook_reports_errors_and_runs_headless(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import os\nfrom diffusion_lib import viz\n"
            "assert os.environ['DIFFUSION_HEADLESS'] == '1'\n"
            "assert viz.slider(print, [1, 2]) is None"
        ),
        nbformat.v4.new_code_cell("raise RuntimeError('a student bug')"),
        nbformat.v4.new_code_cell("print('goes on')"),
    ]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    run = grading.run_notebook(path, timeout=120)
    assert run["errors"] == [(1, "RuntimeError", "a student bug")], run
    assert not run["timed_out"] and run["isolated"] == ISOLATED


def test_a_notebook_past_the_time_limit_is_stopped(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import time\ntime.sleep(600)")]
    path = tmp_path / "slow.ipynb"
    nbformat.write(nb, path)
    start = time.perf_counter()
    run = grading.run_notebook(path, timeout=15)
    assert run["timed_out"] and run["seconds"] == pytest.approx(15, abs=1)
    assert time.perf_counter() - start < 30


def test_grade_needs_student_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="no folder"):
        grading.grade(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(ValueError, match="<student>"):
        grading.grade(tmp_path, tmp_path / "out")
    (tmp_path / "ada").mkdir()
    with pytest.raises(ValueError, match="timeout"):
        grading.grade(tmp_path, tmp_path / "out", timeout=float("nan"))
    with pytest.raises(ValueError, match="jobs"):
        grading.grade(tmp_path, tmp_path / "out", jobs=0)


def test_the_grading_state_is_json_per_student(tmp_path):
    root = tmp_path / "course"
    mini_course(root)
    subs = tmp_path / "subs"
    hand_in(subs, "ada", notebook(*HONEST))
    grading.grade(subs, tmp_path / "out", root=root, verbose=False, timeout=60)
    states = list((tmp_path / "out" / "students").glob("*.json"))
    record = json.loads(states[0].read_text())
    assert record["student"] == "ada" and len(record["marks"]) == 2
    assert not list((tmp_path / "out").glob(".*.tmp"))  # written atomically
    assert os.environ.get("DIFFUSION_GRADING_LOG") is None

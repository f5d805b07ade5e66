"""The grader against a hostile class (in a file of its own, so that pytest-xdist can
run it beside the other grading tests: it takes minutes): every cheat scores 0 or is
flagged, the honest student keeps full marks, the run stays within its limits, no
report is lost."""

import csv
import textwrap
import time
from pathlib import Path

from test_grading import (
    HOLD,
    HONEST,
    NAME,
    STUB_EXTRACT,
    STUB_LOG_SNR,
    exercise_cell,
    hand_in,
    mini_course,
    needs_isolation,
    notebook,
)

from diffusion_lib import grading


def hostile_class(tmp: Path) -> tuple[Path, Path, dict]:
    """The class: {student: what they try}. Paths the cheats aim at are absolute."""
    root = tmp / "course"
    mini_course(root)
    subs, out = tmp / "submissions", tmp / "grades"
    key = root / "_build" / "key" / NAME
    honest_path = hand_in(subs, "honest", notebook(*HONEST))
    hand_in(subs, "blank", notebook(STUB_EXTRACT, STUB_LOG_SNR))
    cheats = {
        "log_writer": (
            "import json, os\n"
            f"for log in [os.environ.get('DIFFUSION_GRADING_LOG', ''), '{out}/log']:\n"
            "    try:\n"
            "        with open(log, 'a') as f:\n"
            "            for n in ('ch02.extract', 'ch02.log_snr'):\n"
            "                f.write(json.dumps({'name': n, 'passed': True, "
            "'message': 'ok'}) + '\\n')\n"
            "    except OSError:\n"
            "        pass"
        ),
        "zero_trials": exercise_cell(
            "ch02.extract",
            "my_extract, trials=0",
            "def my_extract(a, t, x_shape):\n    return a",
        ),
        # one attack an exercise: the library's function for one, the reference for
        # the other
        "passes_the_library_and_the_reference": (
            "from diffusion_lib.exercises import REGISTRY, check\n"
            "check('ch02.extract', REGISTRY['ch02.extract'].reference)\n"
            "my_extract = schedules.extract\n"
            "my_log_snr = REGISTRY['ch02.log_snr'].reference"
        ),
        "wraps_the_library_and_reads_the_callers_frame": (
            "import inspect\n"
            "import diffusion_lib as dl\n"
            "def my_extract(a, t, x_shape):\n"
            "    return dl.extract(a, t, x_shape)  # a thin wrapper\n"
            "def my_log_snr(alphas_cumprod):\n"
            "    return inspect.currentframe().f_back.f_locals['want']"
        ),
        "patches_the_checker": (
            "from diffusion_lib import exercises\n"
            "exercises._failure = lambda *a, **k: None\n"
            "exercises.check = lambda name, fn, **k: exercises.CheckResult(name, True, "
            "'ok')\n"
            + STUB_EXTRACT
            + "\n"
            + STUB_LOG_SNR.replace("check(", "exercises.check(")
        ),
        "reads_the_key_and_classmates": (
            "import json\n"
            "def _steal():\n"
            f"    for path in ({str(key)!r}, {str(honest_path)!r}):\n"
            "        nb = json.load(open(path))\n"
            "        for cell in nb['cells']:\n"
            "            if 'def my_' in ''.join(cell['source']):\n"
            "                code = ''.join(cell['source'])\n"
            "                exec(code.split('from diffusion_lib')[0], globals())\n"
            "def my_extract(a, t, x_shape, _=_steal()):\n"
            "    raise NotImplementedError\n"
            "_steal()"
        ),
        "kills_the_grader": (
            "import os, signal, psutil\n"
            "for p in psutil.process_iter():\n"
            "    if p.pid != os.getpid():\n"
            "        try:\n"
            "            p.kill()\n"
            "        except Exception:\n"
            "            pass\n"
            "os.kill(os.getppid(), signal.SIGKILL)"
        ),
        "leaves_a_rewriter": (
            "import subprocess\n"
            "subprocess.Popen(['sh', '-c', 'sleep 4; echo student,x,x,passed,1,hacked "
            f"> {out}/grades.csv; echo hacked > {subs}/honest/{NAME}'], "
            "start_new_session=True)\n"
            "def my_extract(a, t, x_shape, _=subprocess.Popen(['sh', '-c', 'sleep 4; "
            f"echo hacked > {out}/summary.md'], start_new_session=True)):\n"
            "    raise NotImplementedError"
        ),
        # one C call that holds the GIL with every catchable signal blocked: only a
        # kill stops it (and it sleeps, so the test burns no CPU while it waits)
        "holds_the_lock": HOLD,
        # defined, not called in the notebook (holds_the_lock covers a notebook that
        # hangs): only the grader's harness calls it
        "hangs_in_its_answer": "def my_extract(a, t, x_shape):\n"
        + textwrap.indent(HOLD, "    ")
        + "\n\n\n"
        + HONEST[1],
        "eats_memory": "x = bytearray(40 * 2**30)",
        '=HYPERLINK("evil.example","click")': HONEST[1],
        "pipe|in`name`": HONEST[0],
    }
    for student, code in cheats.items():
        hand_in(subs, student, notebook(code))
    # what the class hands in wrongly
    (subs / "link_to_classmate").mkdir()
    (subs / "link_to_classmate" / NAME).symlink_to(honest_path)
    (subs / "link_to_key").mkdir()
    (subs / "link_to_key" / NAME).symlink_to(key)
    (subs / "linked_folder").symlink_to(subs / "honest")
    hand_in(subs, "too_deep", notebook(*HONEST), f"week2/{NAME}")
    hand_in(subs, "wrong_case", notebook(*HONEST), NAME.replace("mini", "Mini"))
    (subs / "nothing").mkdir()
    (subs / "nothing" / "notes.txt").write_text("I forgot")
    hand_in(subs, "unreadable", notebook(*HONEST)).write_text("{not json")
    return root, out, cheats


@needs_isolation
def test_a_hostile_class(outside):
    tmp_path = outside
    root, out, cheats = hostile_class(tmp_path)
    start = time.perf_counter()
    result = grading.grade(
        tmp_path / "submissions",
        out,
        root=root,
        timeout=40,
        jobs=2,
        verbose=False,
        memory=4 * 2**30,
        check_seconds=10,
        seed=1,
    )
    seconds = time.perf_counter() - start
    assert result["isolated"]
    by = {}
    for m in result["marks"]:
        by.setdefault(m.student, {})[m.exercise] = m
    students = {p.name for p in (tmp_path / "submissions").iterdir()}
    assert set(by) == students  # every folder gets its rows
    points = {s: sum(m.points for m in ms.values()) for s, ms in by.items()}
    assert points.pop("honest") == 2
    assert {m.status for m in by["honest"].values()} == {"passed"}
    # the two with a correct answer keep that one point; nobody else gets any
    assert points.pop('=HYPERLINK("evil.example","click")') == 1
    assert points.pop("pipe|in`name`") == 1
    assert points.pop("hangs_in_its_answer") == 1
    assert points.pop("holds_the_lock") == 0
    assert set(points.values()) == {0}, points
    status = {s: {e: m.status for e, m in ms.items()} for s, ms in by.items()}
    assert status["blank"] == {
        "ch02.extract": "not attempted",
        "ch02.log_snr": "not attempted",
    }
    given = status["passes_the_library_and_the_reference"]
    assert given == {"ch02.extract": "flagged", "ch02.log_snr": "flagged"}
    wraps = "wraps_the_library_and_reads_the_callers_frame"
    assert status[wraps] == {"ch02.extract": "flagged", "ch02.log_snr": "flagged"}
    assert "schedules.extract" in by[wraps]["ch02.extract"].message
    assert "stack" in by[wraps]["ch02.log_snr"].message.lower() or "frame" in (
        by[wraps]["ch02.log_snr"].message
    ), by[wraps]["ch02.log_snr"].message
    assert "time limit" in by["hangs_in_its_answer"]["ch02.extract"].message
    for s in ("link_to_classmate", "link_to_key", "linked_folder", "unreadable"):
        assert set(status[s].values()) == {"refused"}, (s, by[s])
    assert "symbolic link" in by["link_to_key"]["ch02.extract"].message
    assert "one folder too deep" in by["too_deep"]["ch02.extract"].message
    assert "misnamed" in by["wrong_case"]["ch02.extract"].message
    assert set(status["nothing"].values()) == {"missing"}
    assert "notes.txt" in by["nothing"]["ch02.extract"].message
    runs = {(r["student"], r.get("notebook")): r for r in result["runs"]}
    assert runs["holds_the_lock", NAME]["timed_out"]
    thief = runs["reads_the_key_and_classmates", NAME]
    assert {e[1] for e in thief["errors"]} <= {
        "FileNotFoundError",
        "PermissionError",
        "NameError",
    }, thief
    assert thief["errors"], "reading the key must fail inside the sandbox"
    assert any(e[1] == "MemoryError" for e in runs["eats_memory", NAME]["errors"])
    # within its limits: no run past 40 s, and no waiting on a stuck kernel (the old
    # grader blocked forever on the lock-holding cell)
    assert all(r.get("seconds", 0) <= 41 for r in result["runs"]), result["runs"]
    assert seconds < 480, seconds
    # nothing left behind rewrites the grades or a classmate's notebook
    time.sleep(6)
    rows = list(csv.DictReader(open(out / "grades.csv")))
    assert "hacked" not in (out / "grades.csv").read_text()
    assert "hacked" not in (out / "summary.md").read_text()
    assert "hacked" not in (tmp_path / "submissions" / "honest" / NAME).read_text()
    # a spreadsheet runs no formula; the summary's table survives any name
    formula = [r for r in rows if "HYPERLINK" in r["student"]]
    assert formula and all(r["student"].startswith("'=") for r in formula)
    assert not any(
        v.lstrip().startswith(("=", "+", "@")) for r in rows for v in r.values()
    )
    summary = (out / "summary.md").read_text()
    table = [line for line in summary.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(students)
    assert all(line.count(" | ") == table[0].count(" | ") for line in table), table
    assert "## Flagged for the teacher" in summary
    # one state file per student, written as each finished
    assert len(list((out / "students").glob("*.json"))) == len(students)

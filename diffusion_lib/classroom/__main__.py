"""`python -m diffusion_lib.classroom handouts | key | grade ...`: the command line of
diffusion_lib.classroom (handouts and answer keys) and diffusion_lib.grading."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from diffusion_lib import classroom, grading


def _memory(text: str) -> int:
    """ "8G", "512M" or a number of bytes, as bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, re.I)
    if not match:
        raise argparse.ArgumentTypeError(
            f"expected a size such as 8G or 512M, got {text!r}"
        )
    factor = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    return int(float(match.group(1)) * factor[match.group(2).upper()])


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value == value and 0 < value <= 86400):
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds above 0 and at most 86400, got {text!r}"
        )
    return value


def _jobs(text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(
            f"expected a whole number from 1 to 64, got {text!r}"
        )
    return int(text)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m diffusion_lib.classroom",
        description=classroom.__doc__,
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
        type=_seconds,
        default=600.0,
        help="seconds per notebook (default 600)",
    )
    p.add_argument(
        "--jobs",
        type=_jobs,
        default=1,
        help="notebooks run at once (default 1; one per two cores is about right)",
    )
    p.add_argument(
        "--memory",
        type=_memory,
        default=None,
        help="address space per process, e.g. 8G (default 6G)",
    )
    p.add_argument(
        "--chapters",
        default=None,
        help="the assigned chapters, comma-separated file names (default: "
        "every chapter that some student handed in)",
    )
    p.add_argument(
        "--hide",
        action="append",
        default=[],
        help="a further folder the notebooks must not see (the answer key "
        "if it is not under _build/); may be repeated",
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="grade every student again (default: resume, skipping students "
        "whose files have not changed since the last run)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="the seed of the checks' inputs (default: drawn at random)",
    )
    args = parser.parse_args(argv)
    if args.command == "grade":
        start = time.perf_counter()
        chapters = None
        if args.chapters:
            chapters = [c.strip() for c in args.chapters.split(",") if c.strip()]
            chapters = [c if c.endswith(".ipynb") else c + ".ipynb" for c in chapters]
        try:
            result = grading.grade(
                args.submissions,
                args.out,
                args.mode,
                args.timeout,
                jobs=args.jobs,
                memory=args.memory,
                chapters=chapters,
                hide=args.hide,
                restart=args.restart,
                seed=args.seed,
            )
        except (FileNotFoundError, ValueError) as err:
            parser.exit(2, f"error: {err}\n")
        out = Path(args.out)
        kept = len(result["resumed"])
        again = f", {kept} unchanged students kept from the last run" if kept else ""
        print(
            f"graded in {time.perf_counter() - start:.0f} s{again}; wrote "
            f"{out / 'grades.csv'} and {out / 'summary.md'}"
        )
    else:
        written = classroom.write_versions(args.command, args.out)
        print(f"wrote {len(written)} notebooks to {args.out}")


if __name__ == "__main__":
    main()

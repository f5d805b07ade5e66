"""Number each chapter's exercises by chapter: "Exercise 2.1", "Exercise 2.2", ...

sphinx-exercise numbers exercises with Sphinx's numfig, which counts across the whole
book when the table of contents is not numbered (ours is not: the chapter titles carry
their numbers). Chapter 2's first exercise was then "Exercise 5", which a reader of
chapter 2 cannot place. After Sphinx has assigned its numbers (the ``env-get-updated``
event), this renumbers the exercises of every page from 1, in page order, prefixed by
the chapter's number taken from the file name (``notebooks/02_forward_process`` -> 2);
a page without a chapter number keeps plain 1, 2, ... Exercise titles, the "Solution to
Exercise ..." titles and cross-references all read these numbers.
"""

from __future__ import annotations

import re

from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment

CHAPTER_FILE = re.compile(r"(?:^|/)(\d+)_[^/]*$")


def chapter_of(docname: str) -> tuple[int, ...]:
    """(chapter number,) for a chapter's page, () for any other page."""
    match = CHAPTER_FILE.search(docname)
    return (int(match.group(1)),) if match else ()


def renumber(app: Sphinx, env: BuildEnvironment) -> list[str]:
    """Renumber every page's exercises; returns the pages whose numbers changed."""
    changed = []
    for docname, numbers in env.toc_fignumbers.items():
        exercises = numbers.get("exercise")
        if not exercises:
            continue
        in_page_order = sorted(exercises, key=exercises.get)
        prefix = chapter_of(docname)
        renumbered = {ids: (*prefix, k + 1) for k, ids in enumerate(in_page_order)}
        if renumbered != exercises:
            numbers["exercise"] = renumbered
            changed.append(docname)
    return changed


def setup(app: Sphinx) -> dict:
    # after Sphinx's own numbering (the toctree collector's handler, priority 500)
    app.connect("env-get-updated", renumber, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

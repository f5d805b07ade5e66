"""Serve MathJax from the built book instead of a CDN, so the maths renders offline.

Sphinx's mathjax extension puts
``<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js">``
into every page with maths. A reader without a network (a classroom behind a firewall,
a train, a copy of ``_build/html`` on a USB stick) then sees raw LaTeX such as
``\\(\\bar\\alpha_t\\)`` instead of formulas.

This extension takes MathJax from the PyPI package ``django-static-mathjax`` (pinned in
requirements.txt; it has no Django dependency and ships the official MathJax 3.2.2
build, the same ``es5/tex-mml-chtml.js`` component Sphinx 7.4 loads from the CDN) and

* sets ``mathjax_path`` to ``mathjax/tex-mml-chtml.js``; Sphinx reads a relative
  ``mathjax_path`` as relative to the built ``_static/`` folder;
* copies into ``<outdir>/_static/mathjax/`` only what that component needs at run time
  (see ``RUNTIME_FILES``), not the whole 24 MB distribution.

The copy runs on ``builder-inited``, before Sphinx writes any page: Sphinx appends a
``?v=<checksum>`` of each local script to its URL while writing the pages, and it can
only do that for a file that is already in ``_static``.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.errors import ExtensionError
from sphinx.util import logging
from sphinx.util.osutil import copyfile

logger = logging.getLogger(__name__)

PACKAGE = "django-static-mathjax==3.2.2.1"
COMPONENT = "tex-mml-chtml.js"
TARGET = "mathjax"  # folder under _static/

# What tex-mml-chtml.js needs, relative to MathJax's es5/ folder. The component itself
# contains the TeX and MathML input, the CommonHTML output with its font metrics, the
# context menu (ui/menu) and assistive MathML (a11y/assistive-mml). At run time it
# fetches only what is listed here, from paths relative to its own URL:
RUNTIME_FILES = [
    COMPONENT,
    # the CommonHTML web fonts (output/chtml/fonts/woff-v2, its default fontURL);
    "output/chtml/fonts/woff-v2",
    # TeX packages that \require or the autoload extension pull in (e.g. \cancel, \ce);
    "input/tex/extensions",
    # the accessibility options of the context menu (explorer, semantic enrichment,
    # complexity) and the speech-rule engine they load, with its rules (sre/mathmaps).
    "a11y",
    "sre",
]
# Left out: the SVG output (the menu's "Math Renderer > SVG" would need it), the other
# combined components, ui/lazy.js and ui/safe.js (only loaded when configured), and
# adaptors/liteDOM.js (for node, not browsers).


def mathjax_root() -> Path:
    """MathJax's es5/ folder inside the django-static-mathjax package."""
    try:
        root = importlib.resources.files("mathjax") / "static" / "mathjax" / "es5"
    except ModuleNotFoundError:
        root = None
    if root is None or not root.joinpath(COMPONENT).is_file():
        raise ExtensionError(
            f"offline_mathjax: MathJax's {COMPONENT} was not found. Install the PyPI "
            f"package that ships it: pip install {PACKAGE} (it is in requirements.txt)."
        )
    return Path(os.fspath(root))


def use_local_mathjax(app: Sphinx, config: Config) -> None:
    config.mathjax_path = f"{TARGET}/{COMPONENT}"


def copy_mathjax(app: Sphinx) -> None:
    if app.builder.format != "html":
        return
    source = mathjax_root()
    target = Path(app.outdir) / "_static" / TARGET
    for entry in RUNTIME_FILES:
        src = source / entry
        files = [src] if src.is_file() else sorted(src.rglob("*"))
        for file in files:
            if file.is_dir():
                continue
            dest = target / file.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            copyfile(file, dest)  # skips a file whose copy is already up to date


def setup(app: Sphinx) -> dict:
    app.setup_extension("sphinx.ext.mathjax")
    app.connect("config-inited", use_local_mathjax)
    app.connect("builder-inited", copy_mathjax)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}

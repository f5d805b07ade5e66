"""The book builds with warnings as errors (broken references, citations and TOC
entries fail), and its maths renders offline: MathJax is served from the built book
(book/_ext/offline_mathjax.py), never from a CDN. Notebooks are not executed here: nbval
runs them, and `make book` executes them in cpu mode. The book is built once for the
whole module."""

import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from bs4 import BeautifulSoup

ROOT = Path(__file__).resolve().parents[1]
MATH_PAGES = ["book/math.html", "notebooks/02_forward_process.html"]
REMOTE = re.compile(r"^(https?:)?//", re.IGNORECASE)
# TeX left in the visible text: a command such as \alpha, a $ or a \( \[ delimiter
RAW_TEX = re.compile(r"\\[a-zA-Z]+|\\[(\[]|\$")


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    """(result of `jupyter-book build`, its html folder), built once."""
    tmp = tmp_path_factory.mktemp("book")
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    # jupyter-book resolves local_extensions against the folder of the _config.yml it
    # reads, which here is a temporary one
    local = config["sphinx"].get("local_extensions") or {}
    for name, path in local.items():
        local[name] = str(ROOT / path)
    cfg_path = tmp / "_config.yml"
    cfg_path.write_text(yaml.safe_dump(config))
    jb = Path(sys.executable).parent / "jupyter-book"
    cmd = [
        str(jb),
        "build",
        str(ROOT),
        "--config",
        str(cfg_path),
        "--path-output",
        str(tmp / "out"),
        "--warningiserror",
        "--nitpick",
        "--keep-going",
        "--all",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return result, tmp / "out" / "_build" / "html"


def built(book) -> Path:
    result, html = book
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return html


def pages(html: Path) -> list[Path]:
    return sorted(
        p for p in html.rglob("*.html") if p.relative_to(html).parts[0] != "_static"
    )


def soup(path: Path) -> BeautifulSoup:
    return BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")


def visible_text(page: BeautifulSoup, drop: str = "") -> str:
    """The article's text without scripts, styles and code (and without `drop`)."""
    main = page.find("main") or page
    for tag in main(["script", "style", "pre", "code", "textarea"]):
        tag.decompose()
    for tag in main.select(drop) if drop else []:
        tag.decompose()
    return main.get_text()


def test_book_builds_without_warnings(book):
    html = built(book)
    assert (html / "index.html").exists() or (html / "book" / "intro.html").exists()
    assert (html / "notebooks" / "04_sampling_ddpm_ddim.html").exists()
    bib = (html / "book" / "bibliography.html").read_text()
    assert "denoising diffusion probabilistic models" in bib.lower()


def test_no_page_loads_a_script_or_stylesheet_from_the_network(book):
    html = built(book)
    remote = []
    for path in pages(html):
        page = soup(path)
        for tag in page.find_all("script", src=True):
            if REMOTE.match(tag["src"]):
                remote.append(f"{path.relative_to(html)}: <script src={tag['src']}>")
        for tag in page.find_all("link", href=True):
            rel = {r.lower() for r in tag.get("rel", [])}
            if rel & {"stylesheet", "preload", "modulepreload"} and REMOTE.match(
                tag["href"]
            ):
                remote.append(f"{path.relative_to(html)}: <link href={tag['href']}>")
    assert not remote, "loaded from the network:\n" + "\n".join(remote)


def test_mathjax_is_served_from_the_book(book):
    html = built(book)
    mathjax = html / "_static" / "mathjax"
    assert (mathjax / "tex-mml-chtml.js").stat().st_size > 500_000
    fonts = list((mathjax / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
    assert len(fonts) >= 20 and "MathJax_Main-Regular.woff" in {f.name for f in fonts}
    assert (mathjax / "input" / "tex" / "extensions" / "ams.js").exists()
    assert not (mathjax / "output" / "svg").exists(), "only the CHTML output is needed"
    for name in MATH_PAGES:
        path = html / name
        sources = [tag["src"] for tag in soup(path).find_all("script", src=True)]
        local = [
            (path.parent / urlsplit(src).path).resolve()
            for src in sources
            if urlsplit(src).path.endswith("/mathjax/tex-mml-chtml.js")
        ]
        assert local == [(mathjax / "tex-mml-chtml.js").resolve()], (name, sources)


def test_no_raw_tex_outside_maths(book):
    """Every formula reaches MathJax: a $$ block glued to a line of text, for example,
    leaves stray dollars and TeX commands in the page."""
    html = built(book)
    raw = []
    for path in pages(html):
        text = visible_text(soup(path), drop=".math")
        for m in RAW_TEX.finditer(text):
            context = text[max(m.start() - 40, 0) : m.end() + 40]
            raw.append(f"{path.relative_to(html)}: ...{context!r}")
    assert not raw, "TeX outside maths:\n" + "\n".join(raw[:20])


def test_remote_images_read_as_text_without_the_network(book):
    """Offline a remote image (the Colab badge from colab.research.google.com) cannot
    load and the browser shows its alt text instead, so that text must say what the
    image, or the link around it, is."""
    html = built(book)
    missing, badges = [], {}
    for path in pages(html):
        name = str(path.relative_to(html))
        for img in soup(path).find_all("img", src=REMOTE):
            if not img.get("alt", "").strip():
                missing.append(f"{name}: {img}")
            if img.find_parent("a", href=re.compile(r"^https://colab\.research")):
                badges.setdefault(name, []).append(img.get("alt"))
    assert not missing, "remote images without alt text:\n" + "\n".join(missing)
    chapters = sorted((html / "notebooks").glob("[0-9][0-9]_*.html"))
    assert len(chapters) >= 5
    for path in chapters:
        name = str(path.relative_to(html))
        assert badges.get(name) == ["Open In Colab"], (name, badges.get(name))


CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium for a headless browser")
@pytest.mark.parametrize("name", MATH_PAGES)
def test_maths_renders_offline_in_a_browser(book, name, tmp_path):
    """Chromium, with every host name unresolvable, loads the page from file:// and
    MathJax typesets every formula."""
    html = built(book)
    page = html / name
    n_math = len(soup(page).select(".math"))
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # offline, even with a network
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        page.as_uri(),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0 and "</html>" in result.stdout, result.stderr[-3000:]
    dom = BeautifulSoup(result.stdout, "html.parser")
    containers = dom.find_all("mjx-container")
    assert n_math >= 20 and len(containers) >= n_math, (len(containers), n_math)
    assert not dom.find_all("mjx-merror"), "MathJax reported a TeX error"
    text = visible_text(dom, drop="mjx-container")
    assert not re.search(r"\\\(|\\\[|\$\$", text), "raw maths left in the page"


def test_exercises_are_numbered_by_chapter(book):
    """Chapter N's exercises read "Exercise N.1", "N.2", ... in page order, and each
    solution names its exercise's number (book/_ext/chapter_exercises.py); without the
    extension, chapter 2's first exercise was "Exercise 5"."""
    html = built(book)
    chapters = sorted((html / "notebooks").glob("[0-9][0-9]_*.html"))
    assert len(chapters) >= 13
    for path in chapters:
        number = int(path.name[:2])
        page = soup(path)
        titles = [
            t.get_text(" ", strip=True)
            for t in page.select("div.exercise p.admonition-title")
        ]
        expected = [f"Exercise {number}.{k}" for k in range(1, len(titles) + 1)]
        assert titles and [t[: len(e)] for t, e in zip(titles, expected)] == expected
        solutions = [
            t.get_text(" ", strip=True)
            for t in page.select("div.solution p.admonition-title, .solution summary")
        ]
        assert solutions and all(
            re.search(rf"Exercise {number}\.\d+\b", s) for s in solutions
        ), solutions

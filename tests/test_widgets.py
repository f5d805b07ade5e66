"""The chapters' sliders (viz.slider), driven without a browser: the callback runs at
once and again whenever the slider moves."""

import nbformat
import pytest

from diffusion_lib import classroom, viz


def test_slider_calls_back_at_once_and_when_moved():
    seen = []
    widget = viz.slider(lambda t: seen.append(t), [0, 250, 999], "t")
    assert seen == [0]  # the first value's figure, drawn at once
    widget.children[0].value = 999
    widget.children[0].value = 250
    assert seen == [0, 999, 250]
    assert widget.children[0].options == (0, 250, 999)
    with pytest.raises(ValueError, match="at least one value"):
        viz.slider(lambda t: seen.append(t), [], "t")


def test_slider_passes_the_value_by_the_callbacks_argument_name():
    drawn = {}
    widget = viz.slider(lambda w: drawn.update(w=w), [1.0, 3.0, 7.5], "w")
    widget.children[0].value = 7.5
    assert drawn == {"w": 7.5}


def test_at_least_four_chapters_have_a_slider():
    """Found from the TOC's notebooks, not a list; each slider draws its first figure
    at once, so nbval runs every chapter's callback."""
    with_slider = [
        p.stem
        for p in classroom.course_notebooks()
        if any(
            "viz.slider(" in c.source
            for c in nbformat.read(p, 4).cells
            if c.cell_type == "code"
        )
    ]
    assert len(with_slider) >= 4, with_slider


def test_book_build_shows_a_note_instead_of_a_live_slider(monkeypatch):
    """`make book` sets DIFFUSION_HEADLESS=1: the page gets a sentence (the static
    figure beside it shows the pictures), no widget, and the callback does not run."""
    import IPython.display

    shown, called = [], []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    monkeypatch.setenv(viz.HEADLESS, "1")
    assert viz.slider(called.append, [0, 250, 999], "t") is None
    assert called == []
    assert len(shown) == 1 and "slider over `t` from 0 to 999" in shown[0].data


def test_make_book_sets_the_book_build_variable():
    from pathlib import Path

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    book_recipe = makefile.split("\nbook:")[1].split("\n\n")[0]
    assert f"{viz.HEADLESS}=1" in book_recipe


def test_book_build_draws_no_progress_bars(monkeypatch):
    """A progress bar is an ipywidget in a notebook, whose JavaScript a static page
    would fetch from a CDN: the book build draws none; a reader's run does."""
    from diffusion_lib.setup import progress_bar

    monkeypatch.delenv(viz.HEADLESS, raising=False)
    assert progress_bar(range(3), True, "x").disable is False
    assert progress_bar(range(3), False, "x").disable is True
    monkeypatch.setenv(viz.HEADLESS, "1")
    bar = progress_bar(range(3), True, "x")
    assert bar.disable is True and list(bar) == [0, 1, 2]


def test_book_build_loads_diffusers_folders_without_a_progress_bar(monkeypatch):
    """diffusers draws a "Loading pipeline components" bar (an ipywidget) unless told
    not to: a book build turns it off while loading, and back on after."""
    from diffusers.utils import logging as diffusers_logging

    from diffusion_lib import interop

    seen = []

    class Fake:
        def set_progress_bar_config(self, **kwargs):
            pass

    def fake_from_pretrained(*args, **kwargs):
        seen.append(diffusers_logging.is_progress_bar_enabled())
        return Fake()

    monkeypatch.setattr(
        interop.StableDiffusionPipeline, "from_pretrained", fake_from_pretrained
    )
    monkeypatch.setenv(viz.HEADLESS, "1")
    interop.load_diffusers("folder")
    monkeypatch.delenv(viz.HEADLESS)
    interop.load_diffusers("folder")
    assert seen == [False, True] and diffusers_logging.is_progress_bar_enabled()

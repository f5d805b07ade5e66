"""The throughput benchmark (diffusion_lib.bench) runs every model through every code
path it times; its numbers on a GPU are for the device session, not asserted here."""

import math

import pytest

from diffusion_lib import bench


@pytest.mark.parametrize("name", bench.MODELS)
def test_every_model_trains_plain_and_in_bf16(name):
    plain = bench.measure(name, "plain", warmup=1, steps=2, batch_size=8)
    bf16 = bench.measure(name, "bf16", warmup=1, steps=2, batch_size=8)
    for row in (plain, bf16):
        assert row["model"] == name and row["batch_size"] == 8
        assert row["steps_per_s"] > 0 and math.isfinite(row["final_loss"])
    # the same batches and noise; bfloat16 autocast changes the loss only a little
    assert bf16["final_loss"] == pytest.approx(plain["final_loss"], rel=0.1)


def test_compiled_model_trains_like_the_plain_one():
    plain = bench.measure("scenes-prior", "plain", warmup=1, steps=1, batch_size=8)
    compiled = bench.measure("scenes-prior", "compile", warmup=1, steps=1, batch_size=8)
    assert compiled["final_loss"] == pytest.approx(plain["final_loss"], rel=1e-3)
    assert compiled["warmup_s"] > 0


def test_the_float32_variant_restores_pytorchs_setting():
    import torch

    conv = torch.backends.cudnn.conv
    before = conv.fp32_precision
    row = bench.measure("scenes-prior", "no tf32", warmup=1, steps=1, batch_size=8)
    assert row["variant"] == "no tf32" and math.isfinite(row["final_loss"])
    assert conv.fp32_precision == before


def test_table_reports_speed_up_over_plain():
    rows = [
        {
            "model": "m",
            "variant": "plain",
            "batch_size": 8,
            "steps_per_s": 2.0,
            "images_per_s": 16.0,
            "warmup_s": 1.0,
            "peak_memory_mb": None,
        },
        {
            "model": "m",
            "variant": "batch x4",
            "batch_size": 32,
            "steps_per_s": 1.0,
            "images_per_s": 32.0,
            "warmup_s": 1.0,
            "peak_memory_mb": 100,
        },
    ]
    lines = bench.table(rows).splitlines()
    assert "| 1.00x |" in lines[2] and "| 2.00x |" in lines[3] and "| 100 |" in lines[3]


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match="unknown variant 'fp8'"):
        bench.measure("shapes-ddpm", "fp8")
    with pytest.raises(ValueError, match="unknown model 'scenes-vae'"):
        bench.measure("scenes-vae", "plain")


def test_chapters_are_timed_in_fresh_kernels_with_their_failures(tmp_path, capsys):
    import json

    import nbformat

    def notebook(name, *sources):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
        nbformat.write(nb, tmp_path / name)
        return str(tmp_path / name)

    good = notebook(
        "good.ipynb",
        "import os\nassert os.environ['DIFFUSION_MODE'] == 'quick'",
        "x = 1",
    )
    bad = notebook("bad.ipynb", "raise ValueError('a broken cell')", "y = 2")
    out = tmp_path / "rows.json"
    bench.main(
        [
            "--notebooks",
            good,
            bad,
            "--mode",
            "quick",
            "--timeout",
            "120",
            "--json",
            str(out),
        ]
    )
    rows = json.loads(out.read_text())
    assert [r["notebook"] for r in rows] == ["good.ipynb", "bad.ipynb"]
    assert rows[0]["errors"] == [] and not rows[0]["timed_out"]
    assert rows[1]["errors"] == ["cell 0: ValueError: a broken cell"]
    assert all(0 < r["seconds"] < 120 for r in rows)
    table = capsys.readouterr().out
    assert "| good.ipynb | quick |" in table and "| ok |" in table
    assert "ValueError: a broken cell" in table
    with pytest.raises(FileNotFoundError, match="expected an .ipynb file"):
        bench.time_notebooks([tmp_path / "missing.ipynb"])

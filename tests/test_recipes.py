import subprocess
import sys

from diffusion_lib import pretrained


def test_quick_recipes_write_loadable_checkpoints(tmp_path):
    for name in ("shapes-evaluator", "shapes-ddpm"):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "diffusion_lib.recipes",
                name,
                "--quick",
                "--out",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        model, info = pretrained.load_pretrained(name, directory=tmp_path)
        assert info["quick"] is True and info["recipe"] == name
        assert (tmp_path / f"{name}.json").exists()


def test_quick_ablation_reports_every_variant():
    from diffusion_lib.recipes import ABLATION, ablation

    rows = ablation(quick=True)
    assert set(rows) == set(ABLATION)
    assert all(0.0 <= r["joint"] <= 1.0 and r["fid"] >= 0 for r in rows.values())

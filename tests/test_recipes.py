import subprocess
import sys

import pytest

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


def test_quick_scene_recipes_chain_into_a_pipeline(tmp_path):
    """vae and clip first; the latent UNet trains on them (train stage only: the
    measuring stage is exercised on the shipped model)."""
    runs = [["scenes-vae"], ["scenes-clip"], ["scenes-ldm", "--stage", "train"],
            ["scenes-prior", "--stage", "train"],
            ["scenes-upsampler", "--stage", "train"],
            ["scenes-decoder", "--stage", "train"]]  # fmt: skip
    for args in runs:
        out = subprocess.run(
            [sys.executable, "-m", "diffusion_lib.recipes", *args, "--quick",
             "--out", str(tmp_path)],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
    ldm = pretrained.manifest("scenes-ldm", tmp_path)
    assert ldm["vae_sha256"] == pretrained.manifest("scenes-vae", tmp_path)["sha256"]
    assert ldm["latent_shape"] == [4, 8, 8]
    vae_metrics = pretrained.manifest("scenes-vae", tmp_path)["metrics"]
    assert set(vae_metrics["tradeoff"]) == {"1e-06", "0.0001", "0.01", "1"}
    from diffusion_lib.pipelines import MiniStableDiffusion

    pipe = MiniStableDiffusion.from_pretrained(directory=tmp_path)
    assert pipe(["a red circle"], num_steps=2).shape == (1, 3, 64, 64)
    from diffusion_lib.pipelines import MiniDALLE2

    clip_sha = pretrained.manifest("scenes-clip", tmp_path)["sha256"]
    for name in ("scenes-prior", "scenes-decoder"):
        assert pretrained.manifest(name, tmp_path)["clip_sha256"] == clip_sha
    up = pretrained.manifest("scenes-upsampler", tmp_path)
    assert up["sampling_start"] < 999 and up["train"]["crop"] == 32
    dalle2 = MiniDALLE2.from_pretrained(directory=tmp_path)
    assert dalle2(["a red circle"], num_steps=2).shape == (1, 3, 64, 64)


def test_quick_ablation_reports_every_variant():
    from diffusion_lib.recipes import ABLATION, ablation

    rows = ablation(quick=True)
    assert set(rows) == set(ABLATION)
    assert all(0.0 <= r["joint"] <= 1.0 and r["fid"] >= 0 for r in rows.values())


def test_device_option_is_checked_and_named_in_the_manifest(capsys):
    from diffusion_lib.recipes import hardware, main

    with pytest.raises(SystemExit):
        main(["scenes-vae", "--device", "cuda"])
    assert "--device is supported for scenes-ldm only" in capsys.readouterr().err
    assert hardware("cpu").startswith("CPU (")  # not the GPU's name, even if one exists


def test_a_stage_for_a_recipe_without_stages_is_refused(capsys):
    """--stage measure on a recipe without a measure stage used to be ignored: it
    retrained from scratch and would have overwritten the shipped checkpoint."""
    from diffusion_lib.recipes import main

    with pytest.raises(SystemExit):
        main(["scenes-clip", "--stage", "measure"])
    err = capsys.readouterr().err
    assert "--stage is supported for" in err and "scenes-lora" in err

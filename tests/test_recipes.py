import pytest
from test_behaviour import QUICK_RUNS, check_recipe, quick_recipe

from diffusion_lib import pretrained


def test_quick_recipes_write_loadable_checkpoints(tmp_path):
    """...and train as they did before the library's redesign (test_behaviour)."""
    for name in ("shapes-evaluator", "shapes-ddpm"):
        quick_recipe([name], tmp_path)
        check_recipe(name, tmp_path)
        model, info = pretrained.load_pretrained(name, directory=tmp_path)
        assert info["quick"] is True and info["recipe"] == name
        assert (tmp_path / f"{name}.json").exists()


def test_quick_scene_recipes_chain_into_a_pipeline(tmp_path):
    """vae and clip first; the latent UNet trains on them (train stage only: the
    measuring stage is exercised on the shipped model)."""
    for args in QUICK_RUNS[2:]:
        quick_recipe(args, tmp_path)
        check_recipe(args[0], tmp_path)
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
    from diffusion_lib.recipes import main
    from diffusion_lib.setup import hardware

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

import json
import math
import shutil

import pytest
import torch
from test_behaviour import QUICK_RUNS, check_recipe, quick_recipe

from diffusion_lib import pretrained
from diffusion_lib.recipes import budget_stacks
from diffusion_lib.recipes.base import MeasureMemo, budget_steps


def test_quick_recipes_write_loadable_checkpoints(tmp_path):
    """...and train as they did before the library's redesign (test_behaviour)."""
    for name in ("shapes-evaluator", "shapes-ddpm"):
        quick_recipe([name], tmp_path)
        check_recipe(name, tmp_path)
        model, info = pretrained.load_pretrained(name, directory=tmp_path)
        assert info["quick"] is True and info["recipe"] == name
        assert (tmp_path / f"{name}.json").exists()
    # the training's FLOPs are in the manifest, and stage "count" finds them again
    # from one step, without training (compute.py)
    trained = pretrained.manifest("shapes-evaluator", tmp_path)["training_compute"]
    (loop,) = trained["loops"]
    assert loop["steps"] == 20 and trained["flops"] == 20 * loop["flops_per_step"] > 0
    sha = pretrained.manifest("shapes-evaluator", tmp_path)["sha256"]
    manifest = pretrained.manifest("shapes-evaluator", tmp_path)
    manifest["training_compute"] = None
    (tmp_path / "shapes-evaluator.json").write_text(json.dumps(manifest))
    quick_recipe(["shapes-evaluator", "--stage", "count"], tmp_path)
    counted = pretrained.manifest("shapes-evaluator", tmp_path)
    assert counted["training_compute"] == trained and counted["sha256"] == sha
    pretrained.load_pretrained("shapes-evaluator", directory=tmp_path)  # still sealed


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
    # the constant-rate run keeps a UNet per training budget (chapter 10), and each
    # budget ends with a decay of its own, the last one the shipped UNet's
    assert ldm["budget_steps"] == [1, 2, 4, 8] == list(budget_steps(8))
    assert ldm["budget_cooldown_steps"] == [1, 1, 1, 2]
    assert ldm["cooldown"]["train"]["steps"] == 2
    assert ldm["cooldown"]["train"]["lr_schedule"] == "cosine"
    early = MiniStableDiffusion.from_pretrained(directory=tmp_path, step=2)
    last = MiniStableDiffusion.from_pretrained(directory=tmp_path, step=8)
    constant, _ = pretrained.load_pretrained(
        "scenes-ldm", None, tmp_path, 8, "constant"
    )
    assert torch.equal(last.unet.conv_in.weight, pipe.unet.conv_in.weight)
    assert not torch.equal(early.unet.conv_in.weight, pipe.unet.conv_in.weight)
    assert not torch.equal(constant.conv_in.weight, pipe.unet.conv_in.weight)
    run, decay = ldm["training_compute"]["loops"]  # the run, then the last decay
    assert (run["steps"], decay["steps"]) == (8, 2)
    assert run["flops_per_step"] == decay["flops_per_step"]
    for step, n in zip(ldm["budget_steps"], ldm["budget_cooldown_steps"]):
        _, info = pretrained.load_pretrained("scenes-ldm", None, tmp_path, step)
        assert info["cooldown_steps"] == n
        assert info["cooldown_compute"]["flops"] == n * run["flops_per_step"]
    from diffusion_lib.pipelines import MiniDALLE2

    clip_sha = pretrained.manifest("scenes-clip", tmp_path)["sha256"]
    for name in ("scenes-prior", "scenes-decoder"):
        assert pretrained.manifest(name, tmp_path)["clip_sha256"] == clip_sha
    up = pretrained.manifest("scenes-upsampler", tmp_path)
    # from pure noise, predicting v (issue 25: the paper's upsampler)
    assert up["sampling_start"] == 999 and up["prediction_type"] == "v"
    assert up["train"]["crop"] == 32
    dalle2 = MiniDALLE2.from_pretrained(directory=tmp_path)
    assert dalle2(["a red circle"], num_steps=2).shape == (1, 3, 64, 64)
    assert dalle2.decoder.config.text_conditioning
    assert dalle2.decoder.config.unet.glide_attention
    # the twins: trained for the quarter run's steps beside the main network, one
    # thing changed, their FLOPs apart from the checkpoint's (same network and batch:
    # the same FLOPs per step)
    for name, twin, changed in (
        ("scenes-upsampler", "eps", {"prediction_type": "eps"}),
        ("scenes-decoder", "text", {}),
    ):
        main = pretrained.manifest(name, tmp_path)
        quarter = main["budget_steps"][1]
        decay = main["budget_cooldown_steps"][1]  # a twin's budget ends as the main's
        record = main["twins"][twin]
        loop, _ = main["training_compute"]["loops"]  # its run and decay
        assert (record["steps"], record["cooldown_steps"]) == (quarter, decay)
        assert record["flops"] == (quarter + decay) * loop["flops_per_step"]
        _, info = pretrained.load_pretrained(name, None, tmp_path, quarter, twin)
        assert info["twin"] == twin and info["budget_step"] == quarter
        assert info["cooldown_steps"] == decay
        want = {**main["train"], "steps": quarter, **changed}
        assert info["train"] == want, name
    stacks = budget_stacks(tmp_path)
    assert [s["decoder"] for s in stacks] == [1, 2, 4, 8]
    text = MiniDALLE2.from_pretrained(
        directory=tmp_path, steps=stacks[1], twins={"decoder": "text"}
    )
    assert text(["a red circle"], num_steps=2, embedding="text").shape[-1] == 64
    with pytest.raises(ValueError, match="a twin with its step"):
        MiniDALLE2.from_pretrained(directory=tmp_path, twins={"decoder": "text"})
    for args in QUICK_RUNS[2:]:  # each counts its own network's training only
        manifest = pretrained.manifest(args[0], tmp_path)
        loops = manifest["training_compute"]["loops"]  # not the VAE's sweep
        steps = manifest["train"]["steps"]
        if "budget_cooldown_steps" in manifest:  # its run, then its last decay
            loop, decay = loops
            assert decay["steps"] == manifest["budget_cooldown_steps"][-1]
            assert decay["flops_per_step"] == loop["flops_per_step"]
            steps += decay["steps"]
        else:
            (loop,) = loops
        assert loop["steps"] == manifest["train"]["steps"], args[0]
        assert manifest["training_compute"]["flops"] == steps * loop["flops_per_step"]
        assert steps * loop["flops_per_step"] > 0
    # stage "count" finds the run and its decay again, without training
    trained = pretrained.manifest("scenes-ldm", tmp_path)
    (tmp_path / "scenes-ldm.json").write_text(
        json.dumps({**trained, "training_compute": None})
    )
    quick_recipe(["scenes-ldm", "--stage", "count"], tmp_path)
    counted = pretrained.manifest("scenes-ldm", tmp_path)
    assert counted["training_compute"] == trained["training_compute"]


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
    err = capsys.readouterr().err
    assert "--device cuda is supported for scenes-ldm, scenes-decoder only" in err
    assert hardware("cpu").startswith("CPU (")  # not the GPU's name, even if one exists


def test_a_stage_for_a_recipe_without_stages_is_refused(capsys):
    """--stage measure on a recipe without a measure stage used to be ignored: it
    retrained from scratch and would have overwritten the shipped checkpoint."""
    from diffusion_lib.recipes import main

    with pytest.raises(SystemExit):
        main(["scenes-clip", "--stage", "measure"])
    err = capsys.readouterr().err
    assert (
        "--stage measure is supported for shapes-ddpm" in err and "scenes-lora" in err
    )


def test_the_registry_lists_every_shipped_checkpoint_after_what_it_needs():
    """One registry: the CLI, `make checkpoints` (`recipes all`) and `accelerate
    launch` read it; a recipe runs after the checkpoints it reads, and each shipped
    manifest names its recipe."""
    from diffusion_lib.recipes import RECIPES

    shipped = set(pretrained.BUILDERS) | set(pretrained.ADAPTERS)
    assert list(RECIPES) and set(RECIPES) == shipped
    order = list(RECIPES)
    for name, recipe in RECIPES.items():
        assert recipe.name == name
        for need in recipe.needs:
            assert order.index(need) < order.index(name), (name, need)
        assert pretrained.manifest(name)["recipe"] == name


def test_a_recipe_refuses_what_it_cannot_do_before_it_runs():
    from diffusion_lib.recipes import RECIPES

    def fail(*args, **kwargs):
        raise AssertionError("ran")

    clip = RECIPES["scenes-clip"]
    with pytest.raises(ValueError, match="scenes-clip has no stage 'train'"):
        clip.run(stage="train")
    with pytest.raises(ValueError, match="unknown stage 'trian'"):
        clip.run(stage="trian")
    with pytest.raises(ValueError, match="scenes-clip runs on cpu only, not 'cuda'"):
        clip.run(device="cuda")
    lora = RECIPES["scenes-lora"]
    assert lora.stages == ("all", "measure", "count")  # measures as it trains
    assert RECIPES["scenes-ldm"].stages == ("all", "train", "measure", "count")
    from dataclasses import replace

    calls = []
    ddpm = replace(
        RECIPES["shapes-ddpm"],
        train=lambda out, **kw: calls.append(("train", kw)) or {"t": 1},
        measure=lambda out, **kw: calls.append(("measure", kw)) or {"m": 1},
    )
    assert ddpm.run("d", stage="train", seed=3) == {"t": 1}
    assert ddpm.run("d", stage="all") == {"m": 1}
    assert ddpm.run("d", stage="measure") == {"m": 1}
    assert [c[0] for c in calls] == ["train", "train", "measure", "measure"]
    assert calls[0][1] == {
        "quick": False,
        "seed": 3,
        "device": "cpu",
        "accelerator": None,
    }


def test_seed_streams_are_named_and_keep_the_shipped_offsets():
    from diffusion_lib.recipes import LDM_GROUPS, SEED_STREAMS, seed_of

    # the offsets the shipped checkpoints were measured with (their manifests record
    # the prompt seeds: scenes-ldm's groups 9000 + k)
    groups = pretrained.manifest("scenes-ldm")["metrics"]["groups"]
    for k, name in enumerate(LDM_GROUPS):
        assert groups[name]["prompt_seed"] == seed_of(0, "prompts", k) == 9000 + k
    assert seed_of(5, "binding prompts") == 5 + SEED_STREAMS["binding prompts"]
    with pytest.raises(ValueError, match="unknown seed stream 'prompt'"):
        seed_of(0, "prompt")


def test_the_command_line_runs_several_recipes_or_all(capsys):
    from diffusion_lib.recipes import RECIPES
    from diffusion_lib.recipes.cli import parse

    assert parse(["scenes-vae", "scenes-clip"]).names == ["scenes-vae", "scenes-clip"]
    assert parse(["all"]).names == list(RECIPES)
    with pytest.raises(SystemExit):
        parse(["all", "scenes-vae"])
    assert "'all' runs every recipe" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # checked for every name before anything runs
        parse(["scenes-ldm", "scenes-vae", "--device", "cuda"])
    assert "not scenes-vae" in capsys.readouterr().err


def test_budget_steps_are_the_fractions_of_a_run():
    assert budget_steps(10000) == (1250, 2500, 5000, 10000)
    assert budget_steps(4440) == (555, 1110, 2220, 4440)
    assert budget_steps(6000) == (750, 1500, 3000, 6000)
    with pytest.raises(ValueError, match="too short"):
        budget_steps(4)


def test_part_iv_recipes_train_in_the_layouts_diffusers_loads(tiny_part4_dir):
    """The inpainting UNet takes SD's channel order and the ControlNet has the
    released hint encoder: what export_inpaint and export_controlnet need."""
    from diffusion_lib.loaders import load_controlnet, load_inpainting
    from diffusion_lib.pipelines import MiniStableDiffusion

    model, info = load_inpainting(tiny_part4_dir)
    assert info["channel_order"] == "sd" and model.sd_order
    pipe = MiniStableDiffusion.from_pretrained(directory=tiny_part4_dir)
    info = load_controlnet(pipe, directory=tiny_part4_dir)
    assert info["hint_widths"] == [16, 32, 64, 128]
    assert pipe.controlnet.hint_widths == (16, 32, 64, 128)


def test_a_stopped_measure_stage_keeps_what_it_measured(tiny_sd_dir, tmp_path):
    """A measure stage stopped part-way (the session ends, a key is pressed) keeps
    the pieces it finished; run again on the same weights it measures only the rest,
    and on other weights it starts over."""
    out = tmp_path / "run"
    shutil.copytree(tiny_sd_dir, out)
    names, calls = ("scenes-vae", "scenes-clip", "scenes-ldm"), []

    def piece(v):
        def measure():
            calls.append(v)
            return {"value": v, "relation": float("nan"), "steps": (1, 2)}

        return measure

    def stopped():
        raise KeyboardInterrupt

    memo = MeasureMemo("scenes-ldm", out, names, quick=True)
    first = memo("groups", piece(1))
    # what is returned is what the manifest will hold (JSON: tuples become lists)
    assert first["steps"] == [1, 2] and math.isnan(first["relation"])
    with pytest.raises(KeyboardInterrupt):
        memo("sweep", stopped)
    again = MeasureMemo("scenes-ldm", out, names, quick=True)
    assert again("groups", piece(2))["value"] == 1  # kept, not measured again
    assert again("sweep", piece(3))["value"] == 3
    assert calls == [1, 3]
    other = MeasureMemo("scenes-ldm", out, names, quick=False)  # another key
    assert other("groups", piece(4))["value"] == 4 and calls == [1, 3, 4]
    assert other.path.exists()
    other.finish()
    assert not other.path.exists()
    assert MeasureMemo.none("x", piece(5))["value"] == 5

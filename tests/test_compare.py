"""diffusion_lib.compare: costs of the two architectures, counted the same way."""

import pytest

from diffusion_lib import compare
from diffusion_lib.pipelines import MiniDALLE2, MiniStableDiffusion


def test_sd15_shaped_networks_have_the_published_sizes():
    """On the meta device (no memory, no compute): the SD 1.5 UNet has 859,520,964
    parameters and the VAE decoder path 49,490,199, as the released model."""
    cost = compare.pipeline_cost(compare.sd15_stages())
    stages = cost["stages"]
    assert stages["UNet"]["parameters"] == 859_520_964
    assert stages["VAE decoder"]["parameters"] == 49_490_199
    assert stages["UNet"]["calls"] == 50 and stages["UNet"]["batch"] == 2
    # one UNet pass on a [2, 4, 64, 64] latent: hundreds of GFLOPs per image
    assert 3e11 < stages["UNet"]["flops"] / 2 < 2e12
    assert cost["total"]["flops"] == sum(
        r["flops"] * r["calls"] for r in stages.values()
    )


def test_scaled_down_karlo_runs_and_is_timed_on_the_cpu():
    stages = compare.karlo_stages(
        scale=0.0625, prior_steps=2, decoder_steps=2, upsampler_steps=1
    )
    cost = compare.pipeline_cost(stages, device="cpu", time_it=True)
    assert set(cost["stages"]) == {"text encoder", "prior", "decoder", "upsampler"}
    assert all(r["seconds"] > 0 for r in cost["stages"].values())
    assert cost["total"]["peak_bytes"] is None  # no GPU memory on a CPU
    decoder = next(s for s in stages if s.name == "decoder")
    on_meta = compare.stage_cost(decoder)  # shapes only: the same count
    assert on_meta["flops"] == cost["stages"]["decoder"]["flops"]
    timed_only = compare.pipeline_cost(stages, device="cpu", time_it=True, flops=False)
    assert timed_only["total"]["flops"] is None
    assert all(r["flops"] is None for r in timed_only["stages"].values())
    assert timed_only["total"]["seconds"] > 0


def test_diversity_at_interpolates_along_a_sweep():
    sweep = {
        "1": {"joint": 0.5, "diversity": 0.04},
        "3": {"joint": 0.9, "diversity": 0.02},
        "real": {"diversity": 0.03},
    }
    assert compare.diversity_at(sweep, 0.7) == pytest.approx(0.03)
    assert compare.diversity_at(sweep, 0.95) is None
    assert compare.peak_memory(lambda: None, "cpu") is None


def test_mini_costs_on_tiny_pipelines(tiny_sd_dir):
    sd = MiniStableDiffusion.from_pretrained("cpu", tiny_sd_dir)
    dalle2 = MiniDALLE2.from_pretrained("cpu", tiny_sd_dir)
    assert set(compare.mini_parameters(sd)) == {"text encoder", "UNet", "VAE decoder"}
    params = compare.mini_parameters(dalle2)
    assert params["prior"] == sum(p.numel() for p in dalle2.prior.parameters())
    prompt = "a red circle above a blue square"
    two, four = (compare.mini_flops(sd, prompt, num_steps=n) for n in (2, 4))
    assert four["UNet"] == 2 * two["UNet"]  # guidance: 2 rows per step, every step
    assert four["VAE decoder"] == two["VAE decoder"] > 0
    flops = compare.mini_flops(dalle2, prompt, num_steps=2)
    assert set(flops) == {"text encoder", "prior", "decoder", "upsampler"}
    assert all(v > 0 for v in flops.values())
    seconds = compare.seconds_per_image(
        {"sd": sd, "dalle2": dalle2}, [prompt], num_steps=2, repeats=1
    )
    assert set(seconds) == {"sd", "dalle2"} and min(seconds.values()) > 0


def _manifest(directory, name, steps, budget_steps, per_step):
    import json

    (directory / f"{name}.json").write_text(
        json.dumps(
            {
                "recipe": name,
                "sha256": "0" * 64,
                "train": {"steps": steps},
                "budget_steps": budget_steps,
                "training_compute": {
                    "loops": [{"loop": "t", "flops_per_step": per_step, "steps": steps}]
                },
            }
        )
    )


def test_budget_points_sum_each_designs_networks_and_flag_unequal_budgets(tmp_path):
    from diffusion_lib.compare import budget_points, budgets_agree

    _manifest(tmp_path, "scenes-ldm", 8, [1, 2, 4, 8], 100)
    _manifest(tmp_path, "scenes-prior", 4, [0.5, 1, 2, 4], 10)  # (steps are ints
    _manifest(tmp_path, "scenes-decoder", 16, [2, 4, 8, 16], 40)  # in recipes)
    _manifest(tmp_path, "scenes-upsampler", 8, [1, 2, 4, 8], 15)
    points = budget_points(tmp_path)
    assert [p["flops"] for p in points["Stable Diffusion"]] == [100, 200, 400, 800]
    assert [p["flops"] for p in points["unCLIP"]] == [100, 200, 400, 800]
    assert [p["fraction"] for p in points["unCLIP"]] == [1 / 8, 1 / 4, 1 / 2, 1]
    assert budgets_agree(points) == []
    # a budget's decay (recipes.base.cool_down) is part of its compute; a run and
    # its decay are one network, one count per step
    import json

    path = tmp_path / "scenes-ldm.json"
    m = json.loads(path.read_text())
    m["budget_cooldown_steps"] = [1, 1, 1, 2]
    loop = {"loop": "t", "flops_per_step": 100, "steps": 2}
    m["training_compute"]["loops"].append(loop)
    path.write_text(json.dumps(m))
    points = budget_points(tmp_path)
    assert [p["flops"] for p in points["Stable Diffusion"]] == [200, 300, 500, 1000]
    assert len(budgets_agree(points)) == 4
    _manifest(tmp_path, "scenes-clip", 30, [30], 7)
    _manifest(tmp_path, "scenes-vae", 6, [6], 9)
    table = compare.training_compute_table(tmp_path)
    assert table[0]["steps"] == 10 and table[0]["flops"] == 1000
    m["budget_cooldown_steps"] = [1, 2]
    path.write_text(json.dumps(m))
    with pytest.raises(ValueError, match="2 budget cooldowns for 4 budgets"):
        budget_points(tmp_path)
    m["training_compute"]["loops"][1]["flops_per_step"] = 99
    path.write_text(json.dumps(m))
    with pytest.raises(ValueError, match="differ in FLOPs per step"):
        compare.flops_per_step(m)
    _manifest(tmp_path, "scenes-ldm", 8, [1, 2, 4, 8], 100)
    _manifest(tmp_path, "scenes-upsampler", 8, [1, 2, 4, 8], 30)  # 15% more compute
    problems = budgets_agree(budget_points(tmp_path))
    assert len(problems) == 4 and "apart" in problems[0]
    _manifest(tmp_path, "scenes-prior", 4, [1, 2, 4, 4], 10)  # not the same shares
    with pytest.raises(ValueError, match="not the same share"):
        budget_points(tmp_path)


def test_the_compute_table_lists_each_designs_networks_and_the_shared_parts(tmp_path):
    from diffusion_lib.compare import training_compute_table

    _manifest(tmp_path, "scenes-ldm", 8, [1, 2, 4, 8], 100)
    _manifest(tmp_path, "scenes-prior", 4, [1, 2, 3, 4], 10)
    _manifest(tmp_path, "scenes-decoder", 16, [2, 4, 8, 16], 40)
    _manifest(tmp_path, "scenes-upsampler", 8, [1, 2, 4, 8], 15)
    _manifest(tmp_path, "scenes-clip", 30, [30], 7)
    _manifest(tmp_path, "scenes-vae", 6, [6], 9)
    rows = training_compute_table(tmp_path)
    assert [r["network"] for r in rows] == [
        "scenes-ldm",
        "scenes-prior",
        "scenes-decoder",
        "scenes-upsampler",
        "scenes-clip",
        "scenes-vae",
    ]
    assert sum(r["flops"] for r in rows if r["design"] == "unCLIP") == 40 + 640 + 120
    assert rows[0]["flops"] == 800 and rows[-1]["flops"] == 54
    (tmp_path / "scenes-vae.json").write_text('{"recipe": "scenes-vae", "sha256": "x"}')
    with pytest.raises(ValueError, match="--stage count"):
        training_compute_table(tmp_path)


def _measured(directory, name, budgets: dict) -> None:
    """Add measure-stage figures per budget step to a test manifest."""
    import json

    path = directory / f"{name}.json"
    m = json.loads(path.read_text())
    m["metrics"] = {
        "budgets": {
            str(step): {"groups": {"one object, seen": {"joint": acc}}, "binding": {}}
            for step, acc in budgets.items()
        }
    }
    path.write_text(json.dumps(m))


def test_quality_by_budget_joins_each_point_with_its_measurements(tmp_path):
    from diffusion_lib.compare import quality_by_budget, training_compute_table

    _manifest(tmp_path, "scenes-ldm", 8, [1, 2, 4, 8], 100)
    _manifest(tmp_path, "scenes-prior", 4, [0.5, 1, 2, 4], 10)
    _manifest(tmp_path, "scenes-decoder", 16, [2, 4, 8, 16], 40)
    _manifest(tmp_path, "scenes-upsampler", 8, [1, 2, 4, 8], 15)
    _measured(tmp_path, "scenes-ldm", {1: 0.1, 2: 0.2, 4: 0.4, 8: 0.8})
    _measured(tmp_path, "scenes-decoder", {2: 0.05, 4: 0.1, 8: 0.3, 16: 0.5})
    rows = quality_by_budget(tmp_path)
    acc = {
        d: [r["groups"]["one object, seen"]["joint"] for r in v]
        for d, v in rows.items()
    }
    assert acc == {
        "Stable Diffusion": [0.1, 0.2, 0.4, 0.8],
        "unCLIP": [0.05, 0.1, 0.3, 0.5],
    }
    assert [r["flops"] for r in rows["unCLIP"]] == [100, 200, 400, 800]
    _measured(tmp_path, "scenes-decoder", {2: 0.05, 4: 0.1, 8: 0.3})  # one missing
    with pytest.raises(ValueError, match="step 16.*--stage measure"):
        quality_by_budget(tmp_path)
    # a twin's training is listed apart from its design's budget
    import json

    path = tmp_path / "scenes-decoder.json"
    m = json.loads(path.read_text())
    m["twins"] = {"text": {"steps": 4, "flops": 160, "training_seconds": 3.0}}
    path.write_text(json.dumps(m))
    _manifest(tmp_path, "scenes-clip", 30, [30], 7)
    _manifest(tmp_path, "scenes-vae", 6, [6], 9)
    table = training_compute_table(tmp_path)
    twin = table[-1]
    assert twin["network"] == "scenes-decoder, text twin"
    assert twin["design"] == "unCLIP: ablation (apart)" and twin["flops"] == 160
    assert sum(r["flops"] for r in table if r["design"] == "unCLIP") == 800

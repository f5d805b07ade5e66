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

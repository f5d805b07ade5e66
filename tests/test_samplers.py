"""Samplers against a denoiser whose optimal output is known exactly
(diffusion_lib.analytic)."""

import pytest
import torch

from diffusion_lib.analytic import GaussianDataDenoiser
from diffusion_lib.samplers import (
    ddim_step,
    ddpm_step,
    guided_model_output,
    make_timesteps,
    sample,
)
from diffusion_lib.schedules import NoiseSchedule


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ddim_eta0_lands_exactly_on_a_point_mass(kind):
    s = NoiseSchedule.make(kind, 1000)
    model = GaussianDataDenoiser(s, mean=0.5, std=0.0)
    x = sample(
        model,
        s,
        (16, 1, 4, 4),
        sampler="ddim",
        num_steps=10,
        clip_sample=False,
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(x, torch.full_like(x, 0.5), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "sampler,steps,eta",
    [("ddpm", 1000, 0.0), ("ddpm", 100, 0.0), ("ddim", 50, 0.0), ("ddim", 250, 1.0)],
)
def test_samplers_reproduce_gaussian_data_statistics(sampler, steps, eta):
    """Stochastic samplers need many steps (with 50, eta = 1 gives std ~0.48):
    deterministic DDIM needs few."""
    s = NoiseSchedule.make("cosine", 1000)
    model = GaussianDataDenoiser(s, mean=0.3, std=0.5)
    x = sample(
        model,
        s,
        (4000, 1, 2, 2),
        sampler=sampler,
        num_steps=steps,
        eta=eta,
        clip_sample=False,
        generator=torch.Generator().manual_seed(1),
    )
    assert x.mean().item() == pytest.approx(0.3, abs=0.02)
    assert x.std().item() == pytest.approx(0.5, abs=0.02)


def test_wrong_shortcut_has_the_wrong_variance():
    """x_{t-1} = x0_hat + sqrt(1 - ab_{t-1}) z (missing sqrt(ab_{t-1})) does not sample
    the data distribution."""
    s = NoiseSchedule.make("cosine", 1000)
    model = GaussianDataDenoiser(s, mean=0.0, std=0.5)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 1, 2, 2, generator=g)
    for t in make_timesteps(1000, 100):
        tb = torch.full((x.shape[0],), t)
        ab, ab_prev = (
            s.alphas_cumprod[t].item(),
            (s.alphas_cumprod[t - 10].item() if t >= 10 else 1.0),
        )
        x0_hat = (x - (1 - ab) ** 0.5 * model(x, tb)) / ab**0.5
        x = x0_hat + (1 - ab_prev) ** 0.5 * torch.randn(x.shape, generator=g)
    assert abs(x.std().item() - 0.5) > 0.1


def test_ddim_eta1_matches_ddpm_variance():
    s = NoiseSchedule.make("linear", 1000)
    x, out = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    noise = torch.randn(2, 3, 4, 4)
    a = ddim_step(s, out, 500, 499, x, eta=1.0, noise=noise)
    b = ddpm_step(s, out, 500, x, noise=noise, clip_sample=False)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_generator_makes_sampling_reproducible():
    s = NoiseSchedule.make("cosine", 100)
    model = GaussianDataDenoiser(s, std=0.7)
    run = lambda seed: sample(
        model,
        s,
        (2, 1, 4, 4),
        sampler="ddpm",
        num_steps=20,
        generator=torch.Generator().manual_seed(seed),
    )
    torch.testing.assert_close(run(3), run(3))
    assert not torch.allclose(run(3), run(4))
    x, traj = sample(model, s, (2, 1, 4, 4), num_steps=7, return_trajectory=True)
    assert len(traj) == 8 and torch.equal(traj[-1], x)


def test_timesteps():
    assert make_timesteps(1000, 4, "trailing") == [999, 749, 499, 249]
    assert make_timesteps(1000, 4, "leading") == [750, 500, 250, 0]
    assert make_timesteps(10, 10) == list(range(9, -1, -1))
    with pytest.raises(ValueError, match="expected one of"):
        make_timesteps(1000, 4, "random")
    with pytest.raises(ValueError, match="num_steps"):
        make_timesteps(1000, 0)


class _Cond(torch.nn.Module):
    def forward(self, x, t, labels=None):
        return x * 0 + labels.float()[:, :1, None, None]


def test_classifier_free_guidance_formula():
    model = _Cond()
    x, t = torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long)
    cond, null = (
        {"labels": torch.tensor([[3], [3]])},
        {"labels": torch.tensor([[1], [1]])},
    )
    out = guided_model_output(model, x, t, cond, null, guidance_scale=4.0)
    torch.testing.assert_close(out, torch.full_like(x, 1 + 4 * (3 - 1)))
    torch.testing.assert_close(
        guided_model_output(model, x, t, cond, null, 1.0), torch.full_like(x, 3.0)
    )
    torch.testing.assert_close(
        guided_model_output(model, x, t, cond, null, 0.0), torch.full_like(x, 1.0)
    )
    with pytest.raises(ValueError, match="same keys"):
        guided_model_output(model, x, t, cond, {"context": torch.zeros(2)}, 2.0)


def test_bad_sampler_arguments():
    s = NoiseSchedule.make("cosine", 100)
    model = GaussianDataDenoiser(s)
    with pytest.raises(ValueError, match="expected one of"):
        sample(model, s, (1, 1, 2, 2), sampler="euler")
    with pytest.raises(ValueError, match="expected one of"):
        sample(model, s, (1, 1, 2, 2), prediction_type="score")
    with pytest.raises(ValueError, match="eta"):
        ddim_step(s, torch.zeros(1, 1), 5, 4, torch.zeros(1, 1), eta=-1)
    with pytest.raises(ValueError, match="expected one of"):
        ddpm_step(s, torch.zeros(1, 1), 5, torch.zeros(1, 1), variance_type="learned")


def test_ddim_rejects_eta_above_one():
    """eta > 1 makes sigma^2 exceed 1 - a_prev: the direction term's root is complex."""
    s = NoiseSchedule.make("linear", 1000)
    x, out = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"eta must be in \[0, 1\].*negative"):
        ddim_step(s, out, 500, 400, x, eta=1.5, noise=torch.randn(2, 3, 4, 4))
    for t, t_prev in [(999, 998), (500, 400), (1, 0), (0, -1)]:  # eta = 1 stays real
        x_prev = ddim_step(s, out, t, t_prev, x, eta=1.0, noise=torch.randn_like(x))
        assert x_prev.dtype == torch.float32 and bool(x_prev.isfinite().all())


def test_sample_rejects_x_T_of_the_wrong_shape():
    s = NoiseSchedule.make("cosine", 100)
    model = GaussianDataDenoiser(s)
    with pytest.raises(ValueError, match=r"x_T has shape \(3, 1, 2, 2\)"):
        sample(model, s, (2, 1, 2, 2), num_steps=2, x_T=torch.randn(3, 1, 2, 2))


def test_sample_can_start_part_way_from_a_noised_image():
    """start_step (SDEdit): the steps spread over [0, start_step], x_T is required, and
    starting at the last timestep is the ordinary sampler."""
    s = NoiseSchedule.make("cosine", 1000)
    model = GaussianDataDenoiser(s, mean=0.3, std=0.5)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    x_T = torch.randn(4, 1, 2, 2, generator=g())
    full = sample(
        model, s, x_T.shape, num_steps=10, x_T=x_T, generator=g(), clip_sample=False
    )
    same = sample(
        model,
        s,
        x_T.shape,
        num_steps=10,
        x_T=x_T,
        generator=g(),
        clip_sample=False,
        start_step=999,
    )
    assert torch.equal(full, same)
    _, traj = sample(
        model,
        s,
        x_T.shape,
        num_steps=4,
        x_T=x_T,
        start_step=99,
        return_trajectory=True,
        clip_sample=False,
    )
    assert len(traj) == 5
    with pytest.raises(ValueError, match="pass x_T"):
        sample(model, s, x_T.shape, num_steps=4, start_step=99)
    with pytest.raises(ValueError, match=r"start_step must be in \[0, 999\]"):
        sample(model, s, x_T.shape, num_steps=4, x_T=x_T, start_step=1000)

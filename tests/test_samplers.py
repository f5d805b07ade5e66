"""Samplers against a denoiser whose optimal output is known exactly
(diffusion_lib.analytic)."""

import pytest
import torch

from diffusion_lib.analytic import GaussianDataDenoiser
from diffusion_lib.samplers import (
    DDIMSampler,
    DDPMSampler,
    StepOutput,
    ddim_step,
    ddpm_step,
    guided_model_output,
    make_sampler,
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
        DDIMSampler(s, clip_sample=False),
        (16, 1, 4, 4),
        num_steps=10,
        generator=torch.Generator().manual_seed(0),
    ).x0
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
    options = {"eta": eta} if sampler == "ddim" else {}
    x = sample(
        model,
        make_sampler(sampler, s, clip_sample=False, **options),
        (4000, 1, 2, 2),
        num_steps=steps,
        generator=torch.Generator().manual_seed(1),
    ).x0
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
    b = ddpm_step(s, out, 500, 499, x, noise=noise, clip_sample=False)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_the_sampler_objects_take_the_steps_of_the_functions():
    """One step signature for both, (model_output, t, t_prev, x_t), as diffusers'
    schedulers: the functions' x_{t_prev}, and the x0 they predicted on the way."""
    s = NoiseSchedule.make("cosine", 1000)
    g = torch.Generator().manual_seed(0)
    x, out, noise = (torch.randn(2, 3, 4, 4, generator=g) for _ in range(3))
    for t, t_prev in [(999, 979), (500, 499), (3, -1)]:
        ddpm = DDPMSampler(s, prediction_type="v", variance_type="fixed_large")
        got = ddpm.step(out, t, t_prev, x, noise=noise)
        assert isinstance(got, StepOutput)
        want = ddpm_step(
            s,
            out,
            t,
            t_prev,
            x,
            prediction_type="v",
            variance_type="fixed_large",
            noise=noise,
        )
        torch.testing.assert_close(got.prev_sample, want, rtol=0, atol=0)
        ddim = DDIMSampler(s, eta=0.5, clip_sample=False)
        got = ddim.step(out, t, t_prev, x, noise=noise)
        want = ddim_step(s, out, t, t_prev, x, eta=0.5, noise=noise)
        torch.testing.assert_close(got.prev_sample, want, rtol=0, atol=0)
        # x0 from eps (Eq. 15), unclipped: x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps
        a_t = s.alphas_cumprod[t]
        x0 = (x - (1 - a_t).sqrt() * out) / a_t.sqrt()
        torch.testing.assert_close(got.pred_original_sample, x0)
    # clipped as the step clips it
    clipped = DDIMSampler(s).step(out * 50, 500, 400, x).pred_original_sample
    assert clipped.abs().max() <= 1.0
    # noise drawn from the generator: the same seed, the same step
    ddpm = DDPMSampler(s)
    draw = lambda: ddpm.step(
        out, 500, 499, x, generator=torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(draw().prev_sample, draw().prev_sample, rtol=0, atol=0)
    assert repr(ddpm).startswith("DDPMSampler(prediction_type='eps'")
    with pytest.raises(ValueError, match="eta"):
        DDIMSampler(s, eta=2.0)
    with pytest.raises(TypeError, match="eta"):
        DDPMSampler(s, eta=0.5)  # DDPM's variance is its variance_type


def test_generator_makes_sampling_reproducible():
    s = NoiseSchedule.make("cosine", 100)
    model = GaussianDataDenoiser(s, std=0.7)
    run = lambda seed: (
        sample(
            model,
            DDPMSampler(s),
            (2, 1, 4, 4),
            num_steps=20,
            generator=torch.Generator().manual_seed(seed),
        ).x0
    )
    torch.testing.assert_close(run(3), run(3))
    assert not torch.allclose(run(3), run(4))
    out = sample(model, DDIMSampler(s), (2, 1, 4, 4), num_steps=7, keep_trajectory=True)
    assert len(out.trajectory) == 8 and torch.equal(out.trajectory[-1], out.x0)
    assert sample(model, DDIMSampler(s), (2, 1, 4, 4), num_steps=7).trajectory is None


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
        make_sampler("euler", s)
    with pytest.raises(TypeError, match="must be a Sampler"):
        sample(model, "ddim", (1, 1, 2, 2))
    with pytest.raises(ValueError, match="expected one of"):
        DDIMSampler(s, prediction_type="score")
    with pytest.raises(ValueError, match="expected one of"):
        DDIMSampler(s, spacing="random")
    with pytest.raises(ValueError, match="eta"):
        ddim_step(s, torch.zeros(1, 1), 5, 4, torch.zeros(1, 1), eta=-1)
    with pytest.raises(ValueError, match="expected one of"):
        ddpm_step(
            s, torch.zeros(1, 1), 5, 4, torch.zeros(1, 1), variance_type="learned"
        )
    with pytest.raises(ValueError, match="expected one of"):
        DDPMSampler(s, variance_type="learned")


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
        sample(
            model,
            DDIMSampler(s),
            (2, 1, 2, 2),
            num_steps=2,
            x_T=torch.randn(3, 1, 2, 2),
        )


def test_sample_can_start_part_way_from_a_noised_image():
    """start_step (SDEdit): the steps spread over [0, start_step], x_T is required, and
    starting at the last timestep is the ordinary sampler."""
    s = NoiseSchedule.make("cosine", 1000)
    model = GaussianDataDenoiser(s, mean=0.3, std=0.5)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    x_T = torch.randn(4, 1, 2, 2, generator=g())
    ddim = DDIMSampler(s, clip_sample=False)
    full = sample(model, ddim, x_T.shape, num_steps=10, x_T=x_T, generator=g()).x0
    same = sample(
        model, ddim, x_T.shape, num_steps=10, x_T=x_T, generator=g(), start_step=999
    ).x0
    assert torch.equal(full, same)
    traj = sample(
        model,
        ddim,
        x_T.shape,
        num_steps=4,
        x_T=x_T,
        start_step=99,
        keep_trajectory=True,
    ).trajectory
    assert len(traj) == 5
    assert ddim.timesteps(4, start_step=99) == [99, 74, 49, 24]
    with pytest.raises(ValueError, match="pass x_T"):
        sample(model, ddim, x_T.shape, num_steps=4, start_step=99)
    with pytest.raises(ValueError, match=r"start_step must be in \[0, 999\]"):
        sample(model, ddim, x_T.shape, num_steps=4, x_T=x_T, start_step=1000)

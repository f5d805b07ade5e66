import math

import pytest
import torch

from diffusion_lib.schedules import (
    SCHEDULES,
    NoiseSchedule,
    cosine_beta_schedule,
    extract,
    make_betas,
)


def test_linear_schedule_exact_values():
    s = NoiseSchedule.make("linear", 1000)
    assert s.betas[0].item() == pytest.approx(1e-4)
    assert s.betas[-1].item() == pytest.approx(0.02)
    # regression: alpha_bar at the end of DDPM's linear schedule (float64)
    assert s.alphas_cumprod[-1].item() == pytest.approx(4.03582977e-05, rel=1e-7)
    assert s.alphas_cumprod[499].item() == pytest.approx(0.0785872429, rel=1e-8)


def test_cosine_matches_closed_form():
    T, s = 1000, 0.008
    sched = NoiseSchedule.make("cosine", T)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    for t in (0, 10, 500, 900):
        assert sched.alphas_cumprod[t].item() == pytest.approx(
            f(t + 1) / f(0), rel=1e-9
        )
    assert cosine_beta_schedule(T).max().item() == pytest.approx(0.999)


@pytest.mark.parametrize("kind", SCHEDULES)
def test_derived_tensors_are_consistent(kind):
    s = NoiseSchedule.make(kind, 200)
    assert s.betas.dtype == torch.float64
    torch.testing.assert_close(s.alphas_cumprod, torch.cumprod(1 - s.betas, 0))
    assert bool((s.alphas_cumprod[1:] < s.alphas_cumprod[:-1]).all()), (
        "alpha_bar must decrease"
    )
    torch.testing.assert_close(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1])
    assert s.alphas_cumprod_prev[0].item() == 1.0
    torch.testing.assert_close(
        s.posterior_variance,
        s.betas * (1 - s.alphas_cumprod_prev) / (1 - s.alphas_cumprod),
    )
    assert s.posterior_variance[0].item() == 0.0
    torch.testing.assert_close(s.snr, s.alphas_cumprod / (1 - s.alphas_cumprod))
    # one identity of the posterior mean coefficients: the mean of q(x_{t-1}|x_t,x_0)
    # with x_t = sqrt(ab_t) x0 (no noise) is sqrt(ab_{t-1}) x0
    lhs = s.posterior_mean_coef1 + s.posterior_mean_coef2 * s.sqrt_alphas_cumprod
    torch.testing.assert_close(lhs, s.alphas_cumprod_prev.sqrt())


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="expected one of"):
        make_betas("quadratic", 10)
    with pytest.raises(ValueError, match="positive integer"):
        NoiseSchedule.make("linear", 0)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        NoiseSchedule.from_betas(torch.tensor([0.1, 1.5]))


def test_extract_broadcasts_against_a_batch():
    s = NoiseSchedule.make("linear", 100)
    t = torch.tensor([0, 50, 99])
    out = extract(s.alphas_cumprod, t, (3, 3, 8, 8))
    assert out.shape == (3, 1, 1, 1) and out.dtype == torch.float32
    torch.testing.assert_close(out.flatten(), s.alphas_cumprod[t].float())
    x = torch.ones(3, 3, 8, 8, dtype=torch.float64)
    assert extract(s.alphas_cumprod, t, x.shape, x).dtype == torch.float64
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        extract(s.alphas_cumprod, torch.tensor([1, 2]), (3, 3, 8, 8))
    with pytest.raises(ValueError, match="integer"):
        extract(s.alphas_cumprod, torch.tensor([1.0, 2.0, 3.0]), (3, 3, 8, 8))


def test_extract_rejects_t_outside_0_to_T():
    """t = -1 used to mean T - 1 silently (Python indexing); t = T raised IndexError."""
    s = NoiseSchedule.make("linear", 100)
    for bad in ([0, -1], [99, 100]):
        with pytest.raises(ValueError, match=r"t must be in \[0, 100\)"):
            extract(s.alphas_cumprod, torch.tensor(bad), (2, 3, 4, 4))
    assert extract(s.alphas_cumprod, torch.tensor([0, 99]), (2, 3)).shape == (2, 1)

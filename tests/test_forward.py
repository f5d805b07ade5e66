import pytest
import torch

from diffusion_lib import forward as F
from diffusion_lib.schedules import NoiseSchedule


def test_q_sample_closed_form_matches_markov_chain(gen):
    """Iterating q(x_t|x_{t-1}) and sampling q(x_t|x_0) in one shot give the same mean
    and variance."""
    s = NoiseSchedule.make("linear", 1000)
    x0 = torch.full((20000, 1), 0.7, dtype=torch.float64)
    x = x0.clone()
    for t in range(300):
        x = (1 - s.betas[t]).sqrt() * x + s.betas[t].sqrt() * torch.randn(
            x.shape, generator=gen, dtype=torch.float64
        )
    one_shot = F.q_sample(
        s,
        x0,
        torch.full((20000,), 299),
        torch.randn(x0.shape, generator=gen, dtype=torch.float64),
    )
    for sample in (x, one_shot):
        assert sample.mean().item() == pytest.approx(
            0.7 * s.sqrt_alphas_cumprod[299].item(), abs=0.02
        )
        assert sample.var().item() == pytest.approx(
            1 - s.alphas_cumprod[299].item(), abs=0.02
        )


def test_conversions_round_trip(schedule, gen):
    x0 = torch.randn(4, 3, 8, 8, generator=gen)
    eps = torch.randn(4, 3, 8, 8, generator=gen)
    t = torch.tensor([0, 10, 500, 999])
    x_t = F.q_sample(schedule, x0, t, eps)
    # at t = 999 alpha_bar is ~0, and recovering x0 from eps divides by ~0: t <= 500
    torch.testing.assert_close(
        F.predict_x0_from_eps(schedule, x_t[:3], t[:3], eps[:3]),
        x0[:3],
        atol=1e-4,
        rtol=1e-4,
    )
    torch.testing.assert_close(
        F.predict_eps_from_x0(schedule, x_t[:3], t[:3], x0[:3]),
        eps[:3],
        atol=1e-3,
        rtol=1e-3,
    )
    v = F.v_from_x0_eps(schedule, x0, eps, t)
    torch.testing.assert_close(
        F.x0_from_v(schedule, x_t, t, v), x0, atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(
        F.eps_from_v(schedule, x_t, t, v), eps, atol=1e-4, rtol=1e-4
    )
    for kind, out in (("eps", eps), ("v", v)):
        x0_hat, eps_hat = F.model_output_to_x0_eps(schedule, out, x_t, t, kind)
        torch.testing.assert_close(eps_hat, eps, atol=1e-4, rtol=1e-4)


def test_posterior_exact_values():
    s = NoiseSchedule.make("linear", 1000)
    x0, x_t, t = torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), torch.tensor([1])
    mean, var, _ = F.q_posterior(s, x0, x_t, t)
    ab, ab_prev, beta = s.alphas_cumprod[1], s.alphas_cumprod[0], s.betas[1]
    assert mean.item() == pytest.approx(
        (ab_prev.sqrt() * beta / (1 - ab)).item(), rel=1e-6
    )
    assert var.item() == pytest.approx(
        (beta * (1 - ab_prev) / (1 - ab)).item(), rel=1e-6
    )


class _Zero(torch.nn.Module):
    def forward(self, x, t, **kw):
        return torch.zeros_like(x)


@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
@pytest.mark.parametrize("weighting", ["none", "min_snr"])
def test_loss_is_a_finite_scalar_and_targets_are_right(prediction_type, weighting, gen):
    s = NoiseSchedule.make("cosine", 100)
    x0 = torch.randn(8, 3, 4, 4, generator=gen)
    loss = F.diffusion_loss(
        _Zero(),
        s,
        x0,
        prediction_type=prediction_type,
        weighting=weighting,
        generator=gen,
    )
    assert loss.ndim == 0 and torch.isfinite(loss)
    # a zero predictor's eps-loss is E[eps^2] = 1
    if prediction_type == "eps" and weighting == "none":
        big = torch.randn(4096, 3, 4, 4, generator=gen)
        assert F.diffusion_loss(_Zero(), s, big, generator=gen).item() == pytest.approx(
            1.0, abs=0.02
        )


def test_min_snr_weights():
    s = NoiseSchedule.make("cosine", 1000)
    t = torch.tensor([0, 999])
    w = F.loss_weights(s, t, "eps", "min_snr", gamma=5.0)
    assert w[0].item() == pytest.approx(
        5.0 / s.snr[0].item(), rel=1e-4
    )  # high SNR: clipped
    assert w[1].item() == pytest.approx(1.0, rel=1e-4)  # low SNR: weight 1
    with pytest.raises(ValueError, match="expected one of"):
        F.loss_weights(s, t, "eps", "p2")
    with pytest.raises(ValueError, match="expected one of"):
        F.training_target(
            s, torch.zeros(1, 1), torch.zeros(1, 1), torch.tensor([0]), "score"
        )


def test_q_sample_rejects_t_outside_0_to_T():
    """t = -1 used to noise to alpha_bar_{T-1} silently (Python's negative indexing)."""
    s = NoiseSchedule.make("linear", 100)
    x0 = torch.zeros(2, 3, 4, 4)
    for bad in ([0, -1], [99, 100]):
        with pytest.raises(ValueError, match=r"t must be in \[0, 100\)"):
            F.q_sample(s, x0, torch.tensor(bad))

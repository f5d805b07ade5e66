"""The KL autoencoder: geometry, the KL term, PSNR, the latent scaling factor, training,
and clear errors."""

import math

import pytest
import torch

from diffusion_lib.data import make_scenes
from diffusion_lib.train_parts import VAETrainConfig, train_vae
from diffusion_lib.vae import (
    AutoencoderKL,
    DiagonalGaussian,
    VAEConfig,
    compression,
    latent_scaling_factor,
    psnr,
    reconstruct,
    vae_loss,
)

TINY = VAEConfig(channels=(8, 8, 16, 16), groups=4)


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return AutoencoderKL(TINY).eval()


def test_geometry_is_stable_diffusions(vae):
    x = torch.randn(2, 3, 64, 64)
    posterior = vae.encode(x)
    assert posterior.mean.shape == (2, 4, 8, 8) == posterior.std.shape
    assert vae.decode(posterior.mode()).shape == x.shape
    e = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(
        posterior.sample(noise=e), posterior.mean + posterior.std * e
    )
    with pytest.raises(ValueError, match=r"shaped like the latent \(2, 4, 8, 8\)"):
        posterior.sample(noise=torch.randn(2, 4, 4, 4))
    assert TINY.downsample_factor == 8
    assert (
        compression((3, 64, 64), (4, 8, 8))
        == 48
        == compression((3, 512, 512), (4, 64, 64))
    )


def test_kl_matches_torch_distributions():
    moments = torch.randn(3, 8, 2, 2)
    q = DiagonalGaussian(moments)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(q.mean, q.std), torch.distributions.Normal(0.0, 1.0)
    )
    torch.testing.assert_close(q.kl(), ref.flatten(1).sum(1))
    zero = DiagonalGaussian(torch.zeros(1, 8, 2, 2))
    assert zero.kl().item() == 0.0  # q = N(0, I)


def test_sampling_is_the_reparameterisation(vae):
    q = DiagonalGaussian(torch.randn(2, 8, 4, 4))
    g1, g2 = (torch.Generator().manual_seed(5) for _ in range(2))
    e = torch.randn(q.mean.shape, generator=g2)
    torch.testing.assert_close(q.sample(g1), q.mean + q.std * e)


def test_loss_units_and_weights():
    x = torch.zeros(2, 3, 8, 8)
    x_hat = torch.full_like(x, 0.5)
    q = DiagonalGaussian(
        torch.cat([torch.ones(2, 4, 1, 1), torch.zeros(2, 4, 1, 1)], 1)
    )
    loss, rec, kl = vae_loss(x_hat, x, q, kl_weight=0.1)
    assert rec.item() == pytest.approx(0.5)  # mean |error| per image value
    assert kl.item() == pytest.approx(0.5 * 4 / 192)  # KL per image divided by D
    assert loss.item() == pytest.approx(0.5 + 0.1 * 0.5 * 4 / 192)
    assert vae_loss(x_hat, x, q, 0.0, "l2")[1].item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="'l1' or 'l2'"):
        vae_loss(x_hat, x, q, 0.0, "huber")


def test_psnr_known_values():
    x = torch.zeros(2, 3, 4, 4)
    # an error of 0.2 in [-1, 1] is 0.1 on the [0, 1] scale: MSE 0.01 -> 20 dB
    torch.testing.assert_close(psnr(x + 0.2, x), torch.full((2,), 20.0))
    assert psnr(x, x).min() >= 99
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(x, x[:1])


def test_scaling_factor_is_one_over_latent_std(vae):
    x = torch.rand(32, 3, 16, 16) * 2 - 1
    s = latent_scaling_factor(vae, x, seed=0)
    z = vae.encode(x).sample(torch.Generator().manual_seed(0))
    assert s == pytest.approx(1 / z.std().item(), rel=1e-5)
    vae.config.scaling_factor = s
    try:
        scaled = vae.encode_scaled(x)
        torch.testing.assert_close(scaled, vae.encode(x).mean * s)
        torch.testing.assert_close(
            vae.decode_scaled(scaled), vae.decode(vae.encode(x).mean).clamp(-1, 1)
        )
    finally:
        vae.config.scaling_factor = 1.0


def test_training_reduces_the_loss_and_is_seeded():
    x = make_scenes(64, image_size=16, seed=0).images
    cfg = VAETrainConfig(steps=30, batch_size=8, lr=2e-3, warmup=2)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(train_vae(AutoencoderKL(TINY), x, cfg, progress=False))
    assert runs[0].losses == runs[1].losses
    first, last = sum(runs[0].losses[:5]), sum(runs[0].losses[-5:])
    assert last < 0.8 * first, runs[0].losses
    seen = []
    short = VAETrainConfig(steps=4, batch_size=4)
    record = lambda step, model: seen.append(step)
    train_vae(AutoencoderKL(TINY), x, short, False, record, callback_every=2)
    assert seen == [2, 4]
    assert reconstruct(runs[0].ema.model, x).shape == x.shape


def test_config_round_trip_and_bad_inputs(vae):
    assert VAEConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        vae.encode(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.encode(torch.zeros(1, 3, 60, 60))
    with pytest.raises(ValueError, match=r"\[B, 4, H, W\]"):
        vae.decode(torch.zeros(1, 3, 8, 8))
    assert math.isfinite(DiagonalGaussian(torch.full((1, 8, 1, 1), 1e4)).kl().item())

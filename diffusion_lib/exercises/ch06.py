"""Exercises of chapter 6 (registered with diffusion_lib.exercises)."""

from __future__ import annotations

import torch

from ..vae import DiagonalGaussian, psnr, vae_loss
from . import register


def _moments(gen: torch.Generator) -> dict:
    """mean and logvar [B, C, h, w] of a random diagonal Gaussian posterior."""
    shape = (
        int(torch.randint(1, 5, (), generator=gen)),
        int(torch.randint(1, 5, (), generator=gen)),
        int(torch.randint(2, 9, (), generator=gen)),
        int(torch.randint(2, 9, (), generator=gen)),
    )
    return {
        "mean": torch.randn(shape, generator=gen) * 1.5,
        "logvar": torch.randn(shape, generator=gen) * 2.0,
    }


# ch06.gaussian_kl: KL(N(mean, exp(logvar)) || N(0, I)) per image, summed over the
# latent elements (as DiagonalGaussian.kl)


def reference_gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return DiagonalGaussian(torch.cat([mean, logvar], dim=1)).kl()


register(
    "ch06.gaussian_kl",
    reference_gaussian_kl,
    _moments,
    atol=1e-3,
    hint="per element 0.5 * (mean**2 + exp(logvar) - 1 - logvar); then sum over every "
    "dimension but the batch (flatten(1).sum(1)), giving a tensor [B].",
)


# ch06.reparameterize: z = mean + std * eps with std = exp(logvar / 2)


def reference_reparameterize(
    mean: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    return mean + torch.exp(0.5 * logvar) * eps


def _reparameterize_inputs(gen: torch.Generator) -> dict:
    moments = _moments(gen)
    return {**moments, "eps": torch.randn(moments["mean"].shape, generator=gen)}


register(
    "ch06.reparameterize",
    reference_reparameterize,
    _reparameterize_inputs,
    atol=1e-5,
    hint="logvar is the log of the variance, so the standard deviation is "
    "exp(0.5 * logvar), not exp(logvar).",
)


# ch06.psnr: per image, images in [-1, 1], measured on the [0, 1] scale (peak 1)


def _psnr_inputs(gen: torch.Generator) -> dict:
    shape = (int(torch.randint(1, 6, (), generator=gen)), 3, 8, 8)
    x = torch.rand(shape, generator=gen) * 2 - 1
    noise = torch.randn(shape, generator=gen) * (
        torch.rand(shape[0], 1, 1, 1, generator=gen) * 0.3 + 0.01
    )
    return {"x_hat": (x + noise).clamp(-1, 1), "x": x}


register(
    "ch06.psnr",
    lambda x_hat, x: psnr(x_hat, x),
    _psnr_inputs,
    atol=1e-3,
    hint="map both images to [0, 1] first ((x + 1) / 2, so the error halves), take the "
    "mean squared error per image over C, H, W, then 10 * log10(1 / mse): a tensor "
    "[N].",
)


# ch06.scaling_factor: 1 / std of all the elements of a latent tensor (a Python float)


def reference_scaling_factor(latents: torch.Tensor) -> float:
    return 1.0 / latents.flatten().std().item()


def _latent_inputs(gen: torch.Generator) -> dict:
    # >= 4096 elements, so that the biased and the unbiased std agree within atol
    b = int(torch.randint(16, 33, (), generator=gen))
    std = float(torch.rand((), generator=gen)) * 1.8 + 0.2
    mean = torch.randn(1, 4, 1, 1, generator=gen) * 0.3
    return {"latents": mean + std * torch.randn(b, 4, 8, 8, generator=gen)}


register(
    "ch06.scaling_factor",
    reference_scaling_factor,
    _latent_inputs,
    atol=1e-3,
    hint="one standard deviation over every element of the tensor (all images, "
    "channels and positions together), then 1 / std; return a Python float "
    "(.item()).",
)


# ch06.vae_loss: (loss, reconstruction, kl) per image value, as vae.vae_loss with an L1
# reconstruction


def reference_vae_loss(x_hat, x, mean, logvar, kl_weight):
    posterior = DiagonalGaussian(torch.cat([mean, logvar], dim=1))
    return vae_loss(x_hat, x, posterior, kl_weight, "l1")


def _loss_inputs(gen: torch.Generator) -> dict:
    b = int(torch.randint(1, 5, (), generator=gen))
    x = torch.rand(b, 3, 16, 16, generator=gen) * 2 - 1
    latent = {
        "mean": torch.randn(b, 4, 2, 2, generator=gen),
        "logvar": torch.randn(b, 4, 2, 2, generator=gen),
    }
    return {
        "x_hat": x + 0.2 * torch.randn(x.shape, generator=gen),
        "x": x,
        **latent,
        "kl_weight": [1e-6, 1e-2, 1.0][int(torch.randint(0, 3, (), generator=gen))],
    }


register(
    "ch06.vae_loss",
    reference_vae_loss,
    _loss_inputs,
    atol=1e-5,
    hint="D = C * H * W of one image; reconstruction = sum of |x_hat - x| per image, "
    "averaged over the batch, / D; kl = KL per image (summed over latent elements), "
    "averaged over the batch, / D; loss = reconstruction + kl_weight * kl. Return "
    "the tuple (loss, reconstruction, kl) of 0-dimensional tensors.",
)

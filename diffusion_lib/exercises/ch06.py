"""Exercises of chapter 6 (registered with diffusion_lib.exercises)."""

from __future__ import annotations

import torch

from ..vae import DiagonalGaussian, psnr, vae_loss
from .base import register


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


def _mistake_gaussian_kl_mean(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    terms = 0.5 * (mean**2 + logvar.exp() - 1 - logvar)
    return terms.flatten(1).mean(dim=1)  # averaged, not summed, over the latent


def _mistake_gaussian_kl_no_half(mean: torch.Tensor, logvar: torch.Tensor):
    return (mean**2 + logvar.exp() - 1 - logvar).flatten(1).sum(dim=1)


register(
    "ch06.gaussian_kl",
    reference_gaussian_kl,
    _moments,
    atol=1e-3,
    hint="per element 0.5 * (mean**2 + exp(logvar) - 1 - logvar); then sum over every "
    "dimension but the batch (flatten(1).sum(1)), giving a tensor [B].",
    mistakes={
        "averages over the latent elements instead of summing": (
            _mistake_gaussian_kl_mean
        ),
        "forgets the factor 0.5": _mistake_gaussian_kl_no_half,
    },
)


# ch06.reparameterize: z = mean + std * eps with std = exp(logvar / 2)


def reference_reparameterize(
    mean: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    return mean + torch.exp(0.5 * logvar) * eps


def _reparameterize_inputs(gen: torch.Generator) -> dict:
    moments = _moments(gen)
    return {**moments, "eps": torch.randn(moments["mean"].shape, generator=gen)}


def _mistake_reparameterize_exp_logvar(mean, logvar, eps) -> torch.Tensor:
    return mean + torch.exp(logvar) * eps  # the variance, not the std


def _mistake_reparameterize_sqrt_logvar(mean, logvar, eps) -> torch.Tensor:
    return mean + logvar.sqrt() * eps  # treats logvar as the variance: NaN if < 0


register(
    "ch06.reparameterize",
    reference_reparameterize,
    _reparameterize_inputs,
    atol=1e-5,
    hint="logvar is the log of the variance, so the standard deviation is "
    "exp(0.5 * logvar), not exp(logvar).",
    mistakes={
        "uses exp(logvar) as the standard deviation": (
            _mistake_reparameterize_exp_logvar
        ),
        "takes sqrt(logvar) as the std, as if logvar were the variance": (
            _mistake_reparameterize_sqrt_logvar
        ),
    },
)


# ch06.psnr: per image, images in [-1, 1], measured on the [0, 1] scale (peak 1)


def _psnr_inputs(gen: torch.Generator) -> dict:
    shape = (int(torch.randint(1, 6, (), generator=gen)), 3, 8, 8)
    x = torch.rand(shape, generator=gen) * 2 - 1
    noise = torch.randn(shape, generator=gen) * (
        torch.rand(shape[0], 1, 1, 1, generator=gen) * 0.3 + 0.01
    )
    return {"x_hat": (x + noise).clamp(-1, 1), "x": x}


def _mistake_psnr_pm1_scale(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    mse = ((x_hat - x) ** 2).flatten(1).mean(dim=1)  # on [-1, 1]: 4 times too big
    return 10 * torch.log10(1 / mse)


def _mistake_psnr_whole_batch(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    mse = (((x_hat - x) / 2) ** 2).mean()  # one number for the whole batch
    return 10 * torch.log10(1 / mse)


register(
    "ch06.psnr",
    lambda x_hat, x: psnr(x_hat, x),
    _psnr_inputs,
    atol=1e-3,
    hint="map both images to [0, 1] first ((x + 1) / 2, so the error halves), take the "
    "mean squared error per image over C, H, W, then 10 * log10(1 / mse): a tensor "
    "[N].",
    mistakes={
        "measures on the [-1, 1] scale (forgets to halve the error)": (
            _mistake_psnr_pm1_scale
        ),
        "takes one mean squared error over the whole batch, not one per image": (
            _mistake_psnr_whole_batch
        ),
    },
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


def _mistake_scaling_factor_std(latents: torch.Tensor) -> float:
    return latents.flatten().std().item()  # the std itself, not 1 / std


def _mistake_scaling_factor_tensor(latents: torch.Tensor) -> torch.Tensor:
    return 1.0 / latents.flatten().std()  # forgot .item()


register(
    "ch06.scaling_factor",
    reference_scaling_factor,
    _latent_inputs,
    atol=1e-3,
    hint="one standard deviation over every element of the tensor (all images, "
    "channels and positions together), then 1 / std; return a Python float "
    "(.item()).",
    mistakes={
        "returns the standard deviation instead of 1 / std": (
            _mistake_scaling_factor_std
        ),
        "returns a 0-dimensional tensor instead of a Python float": (
            _mistake_scaling_factor_tensor
        ),
    },
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


def _mistake_vae_loss_kl_not_per_value(x_hat, x, mean, logvar, kl_weight):
    d = x[0].numel()
    rec = (x_hat - x).abs().flatten(1).sum(dim=1).mean() / d
    terms = 0.5 * (mean**2 + logvar.exp() - 1 - logvar)
    kl = terms.flatten(1).sum(dim=1).mean()  # not divided by D
    return rec + kl_weight * kl, rec, kl


def _mistake_vae_loss_l2(x_hat, x, mean, logvar, kl_weight):
    d = x[0].numel()
    rec = ((x_hat - x) ** 2).flatten(1).sum(dim=1).mean() / d  # L2, not L1
    terms = 0.5 * (mean**2 + logvar.exp() - 1 - logvar)
    kl = terms.flatten(1).sum(dim=1).mean() / d
    return rec + kl_weight * kl, rec, kl


register(
    "ch06.vae_loss",
    reference_vae_loss,
    _loss_inputs,
    atol=1e-5,
    hint="D = C * H * W of one image; reconstruction = sum of |x_hat - x| per image, "
    "averaged over the batch, / D; kl = KL per image (summed over latent elements), "
    "averaged over the batch, / D; loss = reconstruction + kl_weight * kl. Return "
    "the tuple (loss, reconstruction, kl) of 0-dimensional tensors.",
    mistakes={
        "divides the reconstruction by D but not the KL": (
            _mistake_vae_loss_kl_not_per_value
        ),
        "uses the squared error (L2) instead of the absolute error (L1)": (
            _mistake_vae_loss_l2
        ),
    },
)

"""Exercises of chapter 12 (registered with diffusion_lib.exercises)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..editing import latent_mask, psnr_where
from .base import register

# ch12.renoise: RePaint's jump back, x_{t_prev} [B, C, H, W] -> x_t ~ q(x_t | x_t_prev):
# sqrt(abar_t / abar_prev) x + sqrt(1 - abar_t / abar_prev) noise (abar_t < abar_prev)


def reference_renoise(x_prev, abar_t, abar_prev, noise) -> torch.Tensor:
    ratio = abar_t / abar_prev
    return ratio**0.5 * x_prev + (1 - ratio) ** 0.5 * noise


def _renoise_inputs(gen: torch.Generator) -> dict:
    b = int(torch.randint(1, 4, (), generator=gen))
    a = sorted(float(v) for v in torch.rand(2, generator=gen) * 0.9 + 0.05)
    x, noise = (torch.randn(b, 4, 8, 8, generator=gen) for _ in range(2))
    return {"x_prev": x, "abar_t": a[0], "abar_prev": a[1], "noise": noise}


def _mistake_renoise_from_x0(x_prev, abar_t, abar_prev, noise) -> torch.Tensor:
    return abar_t**0.5 * x_prev + (1 - abar_t) ** 0.5 * noise  # as if x_prev were x_0


def _mistake_renoise_variance(x_prev, abar_t, abar_prev, noise) -> torch.Tensor:
    ratio = abar_t / abar_prev
    return ratio**0.5 * x_prev + (1 - ratio) * noise  # variance used as a std


register(
    "ch12.renoise",
    reference_renoise,
    _renoise_inputs,
    hint="going from t_prev to t multiplies the signal by sqrt(abar_t / abar_prev) "
    "and adds noise of variance 1 - abar_t / abar_prev (the betas of the skipped "
    "steps compose this way); the standard deviation is the square root of that.",
    mistakes={
        "noises as if x_t_prev were the clean x_0": _mistake_renoise_from_x0,
        "uses the variance where the standard deviation belongs": (
            _mistake_renoise_variance
        ),
    },
)


# ch12.latent_mask: a pixel mask [B, 1, S, S] (1 = generate) and the VAE's factor f ->
# the latent mask [B, 1, S / f, S / f]: 1 where any of the f x f pixels is 1


def reference_latent_mask(mask, factor) -> torch.Tensor:
    return latent_mask(mask, factor)


def _latent_inputs(gen: torch.Generator) -> dict:
    b, f = int(torch.randint(1, 4, (), generator=gen)), 8
    mask = torch.zeros(b, 1, 64, 64)
    for i in range(b):
        r, c = (int(v) for v in torch.randint(0, 48, (2,), generator=gen))
        h, w = (int(v) for v in torch.randint(3, 17, (2,), generator=gen))
        mask[i, 0, r : r + h, c : c + w] = 1
    return {"mask": mask, "factor": f}


def _mistake_latent_nearest(mask, factor) -> torch.Tensor:
    return mask[..., factor // 2 :: factor, factor // 2 :: factor]  # one pixel per cell


def _mistake_latent_mean(mask, factor) -> torch.Tensor:
    return (F.avg_pool2d(mask, factor) > 0.5).float()  # loses thin edges


register(
    "ch12.latent_mask",
    reference_latent_mask,
    _latent_inputs,
    hint="a latent cell must be regenerated if *any* of its f x f pixels is: "
    "F.max_pool2d(mask, factor).",
    mistakes={
        "samples one pixel per latent cell": _mistake_latent_nearest,
        "regenerates a cell only when most of it is masked": _mistake_latent_mean,
    },
)


# ch12.psnr_where: images a, b [B, 3, H, W] in [-1, 1] and where [B, 1, H, W] (bool)
# -> PSNR [B] in dB over the selected pixels, on the [0, 1] scale (peak 1)


def reference_psnr_where(a, b, where) -> torch.Tensor:
    return psnr_where(a, b, where)


def _psnr_inputs(gen: torch.Generator) -> dict:
    n = int(torch.randint(1, 4, (), generator=gen))
    a = torch.rand(n, 3, 16, 16, generator=gen) * 2 - 1
    b = (a + 0.1 * torch.randn(n, 3, 16, 16, generator=gen)).clamp(-1, 1)
    where = torch.rand(n, 1, 16, 16, generator=gen) < 0.4
    b = torch.where(where, b, a + 0.5)  # large errors outside `where`
    return {"a": a, "b": b, "where": where}


def _mistake_psnr_everywhere(a, b, where) -> torch.Tensor:
    return psnr_where(a, b, torch.ones_like(where))


def _mistake_psnr_scale(a, b, where) -> torch.Tensor:
    err = (a - b) ** 2 * where  # on the [-1, 1] scale: 6 dB too low
    mse = err.flatten(1).sum(1) / (3 * where.flatten(1).sum(1))
    return 10 * torch.log10(1 / mse)


register(
    "ch12.psnr_where",
    reference_psnr_where,
    _psnr_inputs,
    atol=1e-3,
    hint="work on the [0, 1] scale ((a - b) / 2); average the squared error over the "
    "selected pixels and the 3 channels only (sum of err * where, divided by 3 * "
    "where.sum()); PSNR = 10 log10(1 / MSE).",
    mistakes={
        "averages over every pixel, not only the selected ones": (
            _mistake_psnr_everywhere
        ),
        "measures on the [-1, 1] scale": _mistake_psnr_scale,
    },
)

"""Exercises of chapter 2 (registered with diffusion_lib.exercises)."""

from __future__ import annotations

import math

import torch

from ..schedules import NoiseSchedule, cosine_beta_schedule, extract
from .base import register


def _random_betas(gen: torch.Generator) -> torch.Tensor:
    T = int(torch.randint(5, 200, (1,), generator=gen))
    return torch.rand(T, generator=gen, dtype=torch.float64) * 0.05 + 1e-4


def _extract_inputs(gen: torch.Generator) -> dict:
    T, B = (
        int(torch.randint(5, 100, (1,), generator=gen)),
        int(torch.randint(1, 9, (1,), generator=gen)),
    )
    ndim = int(
        torch.randint(2, 6, (1,), generator=gen)
    )  # x may be [B, D], [B, C, H, W], [B, C, F, H, W] ...
    x_shape = (B, *torch.randint(1, 5, (ndim - 1,), generator=gen).tolist())
    return {
        "a": torch.rand(T, generator=gen, dtype=torch.float64),
        "t": torch.randint(0, T, (B,), generator=gen),
        "x_shape": x_shape,
    }


def reference_extract(a: torch.Tensor, t: torch.Tensor, x_shape) -> torch.Tensor:
    return extract(a, t, x_shape)


def _mistake_extract_no_reshape(a: torch.Tensor, t: torch.Tensor, x_shape):
    return a[t].float()  # [B], which does not broadcast against [B, C, H, W]


def _mistake_extract_always_4d(a: torch.Tensor, t: torch.Tensor, x_shape):
    return a[t].float().view(-1, 1, 1, 1)  # right only when x is [B, C, H, W]


register(
    "ch02.extract",
    reference_extract,
    _extract_inputs,
    hint="index a with t to get [B], then reshape to [B] followed by one 1 per "
    "remaining dimension of x_shape",
    mistakes={
        "returns a[t] of shape [B] without reshaping it": _mistake_extract_no_reshape,
        "always reshapes to [B, 1, 1, 1], whatever the number of dimensions of x": (
            _mistake_extract_always_4d
        ),
    },
)


def reference_alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    return NoiseSchedule.from_betas(betas).alphas_cumprod


def _mistake_alphas_cumprod_of_betas(betas: torch.Tensor) -> torch.Tensor:
    return torch.cumprod(betas, dim=0)


def _mistake_alphas_cumprod_shifted(betas: torch.Tensor) -> torch.Tensor:
    # starts the product one step late: this is alpha_bar_{t-1}
    one = torch.ones(1, dtype=betas.dtype)
    return torch.cat([one, torch.cumprod(1 - betas, dim=0)[:-1]])


register(
    "ch02.alphas_cumprod",
    reference_alphas_cumprod,
    lambda gen: {"betas": _random_betas(gen)},
    atol=1e-8,
    hint="alpha_t = 1 - beta_t, and alpha_bar_t is the running product alpha_0 * ... * "
    "alpha_t",
    mistakes={
        "takes the running product of the betas instead of the alphas": (
            _mistake_alphas_cumprod_of_betas
        ),
        "is off by one step: starts the product with 1 (alpha_bar_{t-1})": (
            _mistake_alphas_cumprod_shifted
        ),
    },
)


def _q_sample_inputs(gen: torch.Generator) -> dict:
    B = int(torch.randint(1, 9, (1,), generator=gen))
    alphas_cumprod = NoiseSchedule.from_betas(_random_betas(gen)).alphas_cumprod
    return {
        "alphas_cumprod": alphas_cumprod,
        "x0": torch.rand(B, 3, 8, 8, generator=gen) * 2 - 1,
        "t": torch.randint(0, alphas_cumprod.shape[0], (B,), generator=gen),
        "noise": torch.randn(B, 3, 8, 8, generator=gen),
    }


def reference_q_sample(alphas_cumprod, x0, t, noise) -> torch.Tensor:
    a = extract(alphas_cumprod, t, x0.shape, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def _mistake_q_sample_no_sqrt(alphas_cumprod, x0, t, noise) -> torch.Tensor:
    a = extract(alphas_cumprod, t, x0.shape, x0)
    return a * x0 + (1 - a) * noise


def _mistake_q_sample_t_minus_1(alphas_cumprod, x0, t, noise) -> torch.Tensor:
    # the paper's 1-based t: alphas_cumprod[-1] silently wraps round at t = 0
    a = alphas_cumprod[t - 1].float().view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


register(
    "ch02.q_sample",
    reference_q_sample,
    _q_sample_inputs,
    hint="alpha_bar must be gathered per sample and reshaped to [B, 1, 1, 1] before it "
    "multiplies x0",
    mistakes={
        "forgets the square roots on alpha_bar and 1 - alpha_bar": (
            _mistake_q_sample_no_sqrt
        ),
        "indexes alphas_cumprod with t - 1 (the paper's 1-based t)": (
            _mistake_q_sample_t_minus_1
        ),
    },
)


def _snr_inputs(gen: torch.Generator) -> dict:
    return {
        "alphas_cumprod": NoiseSchedule.from_betas(_random_betas(gen)).alphas_cumprod
    }


def reference_log_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    return torch.log(alphas_cumprod / (1 - alphas_cumprod))


def _mistake_log_snr_log10(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    return torch.log10(alphas_cumprod / (1 - alphas_cumprod))


def _mistake_log_snr_inverted(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    return torch.log((1 - alphas_cumprod) / alphas_cumprod)  # noise over signal


register(
    "ch02.log_snr",
    reference_log_snr,
    _snr_inputs,
    atol=1e-6,
    hint="SNR = signal variance / noise variance = alpha_bar / (1 - alpha_bar); return "
    "its natural log",
    mistakes={
        "uses log10 instead of the natural log": _mistake_log_snr_log10,
        "puts the noise variance on top: log((1 - alpha_bar) / alpha_bar)": (
            _mistake_log_snr_inverted
        ),
    },
)


def _cosine_inputs(gen: torch.Generator) -> dict:
    return {
        "num_timesteps": int(torch.randint(10, 1001, (1,), generator=gen)),
        "s": float(torch.rand((), generator=gen)) * 0.02,
    }


def reference_cosine_betas(num_timesteps: int, s: float = 0.008) -> torch.Tensor:
    return cosine_beta_schedule(num_timesteps, s)


def _mistake_cosine_betas_no_clip(num_timesteps: int, s: float = 0.008):
    u = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return 1 - f[1:] / f[:-1]  # the last beta is ~1, not 0.999


def _mistake_cosine_betas_float32(num_timesteps: int, s: float = 0.008):
    u = torch.arange(num_timesteps + 1, dtype=torch.float32) / num_timesteps
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=0.999)


register(
    "ch02.cosine_betas",
    reference_cosine_betas,
    _cosine_inputs,
    atol=1e-6,
    hint="evaluate f(u) = cos^2((u + s) / (1 + s) * pi / 2) at u = 0, 1/T, ..., 1; "
    "beta_t = 1 - f((t+1)/T) / f(t/T); clip the betas at 0.999",
    mistakes={
        "forgets to clip the betas at 0.999": _mistake_cosine_betas_no_clip,
        "computes in float32 instead of float64": _mistake_cosine_betas_float32,
    },
)

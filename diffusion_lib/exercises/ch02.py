"""Exercises of chapter 2 (registered with diffusion_lib.exercises)."""

from __future__ import annotations

import torch

from ..schedules import NoiseSchedule, cosine_beta_schedule, extract
from . import register


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


register(
    "ch02.extract",
    reference_extract,
    _extract_inputs,
    hint="index a with t to get [B], then reshape to [B] followed by one 1 per "
    "remaining dimension of x_shape",
)


def reference_alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    return NoiseSchedule.from_betas(betas).alphas_cumprod


register(
    "ch02.alphas_cumprod",
    reference_alphas_cumprod,
    lambda gen: {"betas": _random_betas(gen)},
    atol=1e-8,
    hint="alpha_t = 1 - beta_t, and alpha_bar_t is the running product alpha_0 * ... * "
    "alpha_t",
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


register(
    "ch02.q_sample",
    reference_q_sample,
    _q_sample_inputs,
    hint="alpha_bar must be gathered per sample and reshaped to [B, 1, 1, 1] before it "
    "multiplies x0",
)


def _snr_inputs(gen: torch.Generator) -> dict:
    return {
        "alphas_cumprod": NoiseSchedule.from_betas(_random_betas(gen)).alphas_cumprod
    }


def reference_log_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    return torch.log(alphas_cumprod / (1 - alphas_cumprod))


register(
    "ch02.log_snr",
    reference_log_snr,
    _snr_inputs,
    atol=1e-6,
    hint="SNR = signal variance / noise variance = alpha_bar / (1 - alpha_bar); return "
    "its natural log",
)


def _cosine_inputs(gen: torch.Generator) -> dict:
    return {
        "num_timesteps": int(torch.randint(10, 1001, (1,), generator=gen)),
        "s": float(torch.rand((), generator=gen)) * 0.02,
    }


def reference_cosine_betas(num_timesteps: int, s: float = 0.008) -> torch.Tensor:
    return cosine_beta_schedule(num_timesteps, s)


register(
    "ch02.cosine_betas",
    reference_cosine_betas,
    _cosine_inputs,
    atol=1e-6,
    hint="evaluate f(u) = cos^2((u + s) / (1 + s) * pi / 2) at u = 0, 1/T, ..., 1; "
    "beta_t = 1 - f((t+1)/T) / f(t/T); clip the betas at 0.999",
)

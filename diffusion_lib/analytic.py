"""Denoisers whose optimal output is known in closed form, for testing samplers exactly.

If the data are x_0 ~ N(mu, s^2 I), then x_t ~ N(sqrt(a) mu, (a s^2 + 1 - a) I) with
a = alpha_bar_t, and the minimum-MSE noise prediction is
    eps*(x_t, t) = sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a).
A perfect sampler driven by it must return samples with mean mu and standard deviation
s; with s = 0 (a point mass) DDIM with eta = 0 must land exactly on mu.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .schedules import NoiseSchedule, extract


class GaussianDataDenoiser(nn.Module):
    """The exact eps-prediction for data N(mean, std^2 I).

    model(x_t [B, ...], t [B]) -> eps [B, ...]."""

    def __init__(self, schedule: NoiseSchedule, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        if std < 0:
            raise ValueError(f"std must be >= 0, got {std}")
        self.schedule, self.mean, self.std = schedule, mean, std
        self.dummy = nn.Parameter(
            torch.zeros(()), requires_grad=False
        )  # gives the module a device

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, **unused) -> torch.Tensor:
        a = extract(self.schedule.alphas_cumprod, t, x_t.shape, x_t)
        return (1 - a).sqrt() * (x_t - a.sqrt() * self.mean) / (a * self.std**2 + 1 - a)

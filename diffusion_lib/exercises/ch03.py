"""Exercises of chapter 3 (registered with diffusion_lib.exercises)."""

from __future__ import annotations

import math

import torch

from ..analytic import GaussianDataDenoiser
from ..forward import loss_weights, q_sample, training_target
from ..schedules import NoiseSchedule, extract
from ..unet import timestep_embedding
from .base import register

_SCHEDULE = NoiseSchedule.make("cosine", 1000)
_PREDICTION_TYPES = ("eps", "x0", "v")


def _images(generator: torch.Generator, batch: int | None = None) -> dict:
    b = batch or int(torch.randint(1, 5, (), generator=generator))
    shape = (b, 3, 4, 4)
    return {
        "x0": torch.rand(shape, generator=generator) * 2 - 1,
        "eps": torch.randn(shape, generator=generator),
        "t": torch.randint(0, _SCHEDULE.num_timesteps, (b,), generator=generator),
    }


# ch03.timestep_embedding: the sinusoidal embedding of integer timesteps
def _embedding_inputs(generator: torch.Generator) -> dict:
    b = int(torch.randint(1, 6, (), generator=generator))
    dim = int(torch.randint(2, 17, (), generator=generator)) * 2
    return {"t": torch.randint(0, 1000, (b,), generator=generator), "dim": dim}


def _mistake_timestep_embedding_sin_first(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


def _mistake_timestep_embedding_over_dim(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half) / dim)  # not / half
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


register(
    "ch03.timestep_embedding",
    lambda t, dim: timestep_embedding(t, dim),
    _embedding_inputs,
    atol=1e-3,
    hint="half = dim // 2 frequencies exp(-log(10000) * i / half) for i = 0..half-1; "
    "the output is [cos(t * freqs), sin(t * freqs)] concatenated along the last "
    "dimension (cos first), float32.",
    mistakes={
        "puts the sin half first and the cos half second": (
            _mistake_timestep_embedding_sin_first
        ),
        "divides the frequency exponent by dim instead of dim // 2": (
            _mistake_timestep_embedding_over_dim
        ),
    },
)


# ch03.training_target: what the network regresses onto, for eps-, x0- and v-prediction
def _target_inputs(generator: torch.Generator) -> dict:
    kind = _PREDICTION_TYPES[int(torch.randint(0, 3, (), generator=generator))]
    return {"schedule": _SCHEDULE, **_images(generator), "prediction_type": kind}


def _v_mistake(wrong_v):
    """A student whose eps and x0 targets are right but whose v is wrong_v(a, x0, eps)
    (a = alpha_bar_t, reshaped)."""

    def target(schedule, x0, eps, t, prediction_type):
        if prediction_type != "v":
            return training_target(schedule, x0, eps, t, prediction_type)
        a = extract(schedule.alphas_cumprod, t, x0.shape, x0)
        return wrong_v(a, x0, eps)

    return target


# the sign of v flipped
_mistake_training_target_v_sign = _v_mistake(
    lambda a, x0, eps: (1 - a).sqrt() * x0 - a.sqrt() * eps
)
# alpha_bar where its square root belongs
_mistake_training_target_v_no_sqrt = _v_mistake(
    lambda a, x0, eps: a * eps - (1 - a) * x0
)


register(
    "ch03.training_target",
    lambda schedule, x0, eps, t, prediction_type: training_target(
        schedule, x0, eps, t, prediction_type
    ),
    _target_inputs,
    hint="eps -> eps; x0 -> x0; v -> sqrt(alpha_bar_t) * eps - sqrt(1 - alpha_bar_t) * "
    "x0, with alpha_bar_t = schedule.alphas_cumprod[t] reshaped to [B, 1, 1, 1] and "
    "cast to float32 (dl.extract does both).",
    mistakes={
        "flips the sign of v: sqrt(1 - alpha_bar) x0 - sqrt(alpha_bar) eps": (
            _mistake_training_target_v_sign
        ),
        "forgets the square roots in v: alpha_bar eps - (1 - alpha_bar) x0": (
            _mistake_training_target_v_no_sqrt
        ),
    },
)


# ch03.noisy_loss: noise x_0 with given eps at given t, and the eps-prediction loss of a
# model
def _loss_inputs(generator: torch.Generator) -> dict:
    std = float(torch.rand((), generator=generator)) * 0.5 + 0.1
    return {
        "model": GaussianDataDenoiser(_SCHEDULE, mean=0.0, std=std),
        "schedule": _SCHEDULE,
        **_images(generator),
    }


def _noisy_loss(model, schedule, x0, t, eps):
    x_t = q_sample(schedule, x0, t, eps)
    return ((model(x_t, t) - eps) ** 2).mean()


def _mistake_noisy_loss_sum(model, schedule, x0, t, eps):
    x_t = q_sample(schedule, x0, t, eps)
    return ((model(x_t, t) - eps) ** 2).sum()


def _mistake_noisy_loss_x0_target(model, schedule, x0, t, eps):
    x_t = q_sample(schedule, x0, t, eps)
    return ((model(x_t, t) - x0) ** 2).mean()


register(
    "ch03.noisy_loss",
    _noisy_loss,
    _loss_inputs,
    hint="x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * eps (DDPM Eq. 4); the "
    "loss is the mean of (model(x_t, t) - eps) ** 2 over every element, a "
    "0-dimensional tensor.",
    mistakes={
        "sums the squared error instead of averaging it": _mistake_noisy_loss_sum,
        "compares the model's output with x0 instead of eps": (
            _mistake_noisy_loss_x0_target
        ),
    },
)


# ch03.min_snr_weights: Min-SNR-gamma loss weights for eps-prediction
def _weight_inputs(generator: torch.Generator) -> dict:
    b = int(torch.randint(1, 9, (), generator=generator))
    return {
        "schedule": _SCHEDULE,
        "t": torch.randint(0, _SCHEDULE.num_timesteps, (b,), generator=generator),
        "gamma": float(torch.randint(1, 9, (), generator=generator)),
    }


def _mistake_min_snr_weights_no_division(schedule, t, gamma):
    return schedule.snr[t].float().clamp(max=gamma)  # the weight of x0-prediction


def _mistake_min_snr_weights_max(schedule, t, gamma):
    snr = schedule.snr[t].float()
    return snr.clamp(min=gamma) / snr  # max(SNR, gamma), not min


register(
    "ch03.min_snr_weights",
    lambda schedule, t, gamma: loss_weights(schedule, t, "eps", "min_snr", gamma),
    _weight_inputs,
    hint="SNR(t) = alpha_bar_t / (1 - alpha_bar_t) (schedule.snr); for eps-prediction "
    "the weight is min(SNR(t), gamma) / SNR(t), a float32 tensor [B].",
    mistakes={
        "forgets to divide min(SNR, gamma) by SNR": (
            _mistake_min_snr_weights_no_division
        ),
        "takes max(SNR, gamma) instead of min(SNR, gamma)": (
            _mistake_min_snr_weights_max
        ),
    },
)

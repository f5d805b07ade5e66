"""Exercises of chapter 3 (registered with diffusion_lib.exercises)."""

from __future__ import annotations

import torch

from ..analytic import GaussianDataDenoiser
from ..forward import loss_weights, q_sample, training_target
from ..schedules import NoiseSchedule
from ..unet import timestep_embedding
from . import register

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


register(
    "ch03.timestep_embedding",
    lambda t, dim: timestep_embedding(t, dim),
    _embedding_inputs,
    atol=1e-3,
    hint="half = dim // 2 frequencies exp(-log(10000) * i / half) for i = 0..half-1; "
    "the output is [cos(t * freqs), sin(t * freqs)] concatenated along the last "
    "dimension (cos first), float32.",
)


# ch03.training_target: what the network regresses onto, for eps-, x0- and v-prediction
def _target_inputs(generator: torch.Generator) -> dict:
    kind = _PREDICTION_TYPES[int(torch.randint(0, 3, (), generator=generator))]
    return {"schedule": _SCHEDULE, **_images(generator), "prediction_type": kind}


register(
    "ch03.training_target",
    lambda schedule, x0, eps, t, prediction_type: training_target(
        schedule, x0, eps, t, prediction_type
    ),
    _target_inputs,
    hint="eps -> eps; x0 -> x0; v -> sqrt(alpha_bar_t) * eps - sqrt(1 - alpha_bar_t) * "
    "x0, with alpha_bar_t = schedule.alphas_cumprod[t] reshaped to [B, 1, 1, 1] and "
    "cast to float32 (dl.extract does both).",
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


register(
    "ch03.noisy_loss",
    _noisy_loss,
    _loss_inputs,
    hint="x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * eps (DDPM Eq. 4); the "
    "loss is the mean of (model(x_t, t) - eps) ** 2 over every element, a "
    "0-dimensional tensor.",
)


# ch03.min_snr_weights: Min-SNR-gamma loss weights for eps-prediction
def _weight_inputs(generator: torch.Generator) -> dict:
    b = int(torch.randint(1, 9, (), generator=generator))
    return {
        "schedule": _SCHEDULE,
        "t": torch.randint(0, _SCHEDULE.num_timesteps, (b,), generator=generator),
        "gamma": float(torch.randint(1, 9, (), generator=generator)),
    }


register(
    "ch03.min_snr_weights",
    lambda schedule, t, gamma: loss_weights(schedule, t, "eps", "min_snr", gamma),
    _weight_inputs,
    hint="SNR(t) = alpha_bar_t / (1 - alpha_bar_t) (schedule.snr); for eps-prediction "
    "the weight is min(SNR(t), gamma) / SNR(t), a float32 tensor [B].",
)

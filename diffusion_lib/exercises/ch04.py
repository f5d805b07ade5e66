"""Exercises of chapter 4 (registered with diffusion_lib.exercises)."""

from __future__ import annotations

import math

import torch

from ..forward import q_posterior
from ..samplers import ddim_step, ddpm_step, make_timesteps
from ..schedules import NoiseSchedule, extract
from .base import register

_SCHEDULE = NoiseSchedule.make("linear", 1000)


def _batch(generator: torch.Generator) -> dict:
    b = int(torch.randint(1, 5, (), generator=generator))
    return {"x_t": torch.randn(b, 3, 4, 4, generator=generator)}


# ch04.posterior_mean: the mean of q(x_{t-1} | x_t, x_0) (DDPM Eq. 7)
def _posterior_inputs(generator: torch.Generator) -> dict:
    x_t = _batch(generator)["x_t"]
    return {
        "schedule": _SCHEDULE,
        "x0": torch.rand(x_t.shape, generator=generator) * 2 - 1,
        "x_t": x_t,
        "t": torch.randint(
            1, _SCHEDULE.num_timesteps, (x_t.shape[0],), generator=generator
        ),
    }


def _mistake_posterior_mean_alpha_bar_t(schedule, x0, x_t, t):
    a_t = extract(schedule.alphas_cumprod, t, x_t.shape, x_t)
    a_prev = extract(schedule.alphas_cumprod, t, x_t.shape, x_t)  # not ..._prev
    beta = extract(schedule.betas, t, x_t.shape, x_t)
    return (
        a_prev.sqrt() * beta / (1 - a_t) * x0
        + (1 - beta).sqrt() * (1 - a_prev) / (1 - a_t) * x_t
    )


def _mistake_posterior_mean_no_sqrt_alpha(schedule, x0, x_t, t):
    a_t = extract(schedule.alphas_cumprod, t, x_t.shape, x_t)
    a_prev = extract(schedule.alphas_cumprod_prev, t, x_t.shape, x_t)
    beta = extract(schedule.betas, t, x_t.shape, x_t)
    return (
        a_prev.sqrt() * beta / (1 - a_t) * x0
        + (1 - beta) * (1 - a_prev) / (1 - a_t) * x_t  # alpha_t, not sqrt(alpha_t)
    )


register(
    "ch04.posterior_mean",
    lambda schedule, x0, x_t, t: q_posterior(schedule, x0, x_t, t)[0],
    _posterior_inputs,
    hint="mu = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) * x0 + sqrt(alpha_t) "
    "(1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * x_t; schedule.alphas_cumprod_prev[t] "
    "is alpha_bar_{t-1}; reshape each coefficient to [B, 1, 1, 1] and cast to float32 "
    "(dl.extract does both).",
    mistakes={
        "uses alpha_bar_t where alpha_bar_{t-1} belongs (alphas_cumprod[t])": (
            _mistake_posterior_mean_alpha_bar_t
        ),
        "forgets the square root of alpha_t in the coefficient of x_t": (
            _mistake_posterior_mean_no_sqrt_alpha
        ),
    },
)


# ch04.ddpm_step: one ancestral step t -> t - 1 for a given eps_hat and noise z
# (DDPM Algorithm 2, no clipping)
def _step_inputs(generator: torch.Generator) -> dict:
    x_t = _batch(generator)["x_t"]
    # every third draw is the last step, t = 0, where no noise is added
    t = (
        0
        if int(torch.randint(0, 3, (), generator=generator)) == 0
        else int(torch.randint(1, 1000, (), generator=generator))
    )
    return {
        "schedule": _SCHEDULE,
        "eps_hat": torch.randn(x_t.shape, generator=generator),
        "t": t,
        "x_t": x_t,
        "noise": torch.randn(x_t.shape, generator=generator),
    }


def _mistake_ddpm_step_variance_not_std(schedule, eps_hat, t, x_t, noise):
    beta, a_t = schedule.betas[t].item(), schedule.alphas_cumprod[t].item()
    mean = (x_t - beta / math.sqrt(1 - a_t) * eps_hat) / math.sqrt(1 - beta)
    if t == 0:
        return mean
    return mean + schedule.posterior_variance[t].item() * noise  # sigma^2, not sigma


def _mistake_ddpm_step_t_minus_1(schedule, eps_hat, t, x_t, noise):
    # the paper's 1-based t: index t - 1 (which wraps round to T - 1 at t = 0)
    beta, a_t = schedule.betas[t - 1].item(), schedule.alphas_cumprod[t - 1].item()
    mean = (x_t - beta / math.sqrt(1 - a_t) * eps_hat) / math.sqrt(1 - beta)
    if t == 0:
        return mean
    return mean + math.sqrt(schedule.posterior_variance[t - 1].item()) * noise


register(
    "ch04.ddpm_step",
    lambda schedule, eps_hat, t, x_t, noise: ddpm_step(
        schedule, eps_hat, t, t - 1, x_t, clip_sample=False, noise=noise
    ),
    _step_inputs,
    atol=1e-4,
    hint="x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) * eps_hat) / sqrt(alpha_t) + "
    "sqrt(beta_tilde_t) * noise (Eq. 11 and Algorithm 2) with beta_tilde_t = "
    "schedule.posterior_variance[t]; at t = 0 return the mean only (no noise).",
    mistakes={
        "adds beta_tilde_t times the noise: the variance, not the standard deviation": (
            _mistake_ddpm_step_variance_not_std
        ),
        "indexes the schedule with t - 1 (the paper's 1-based t)": (
            _mistake_ddpm_step_t_minus_1
        ),
    },
)


# ch04.ddim_step: one deterministic DDIM step t -> t_prev (eta = 0, Song et al. Eq. 12)
def _ddim_inputs(generator: torch.Generator) -> dict:
    x_t = _batch(generator)["x_t"]
    t = int(torch.randint(1, 1000, (), generator=generator))
    # every third draw is the last step, to clean data (t_prev = -1)
    last = int(torch.randint(0, 3, (), generator=generator)) == 0
    t_prev = -1 if last else int(torch.randint(0, t, (), generator=generator))
    return {
        "schedule": _SCHEDULE,
        "eps_hat": torch.randn(x_t.shape, generator=generator),
        "t": t,
        "t_prev": t_prev,
        "x_t": x_t,
    }


def _mistake_ddim_step_alphas(schedule, eps_hat, t, t_prev, x_t):
    # schedule.alphas (alpha_t = 1 - beta_t) where alphas_cumprod belongs
    a_t = schedule.alphas[t].item()
    a_prev = schedule.alphas[t_prev].item() if t_prev >= 0 else 1.0
    x0_hat = (x_t - math.sqrt(1 - a_t) * eps_hat) / math.sqrt(a_t)
    return math.sqrt(a_prev) * x0_hat + math.sqrt(1 - a_prev) * eps_hat


def _mistake_ddim_step_prev_wraps(schedule, eps_hat, t, t_prev, x_t):
    a_t = schedule.alphas_cumprod[t].item()
    a_prev = schedule.alphas_cumprod[t_prev].item()  # [-1] is alpha_bar_{T-1}, not 1
    x0_hat = (x_t - math.sqrt(1 - a_t) * eps_hat) / math.sqrt(a_t)
    return math.sqrt(a_prev) * x0_hat + math.sqrt(1 - a_prev) * eps_hat


register(
    "ch04.ddim_step",
    lambda schedule, eps_hat, t, t_prev, x_t: ddim_step(
        schedule, eps_hat, t, t_prev, x_t, eta=0.0
    ),
    _ddim_inputs,
    atol=1e-4,
    hint="x0_hat = (x_t - sqrt(1 - a_t) eps_hat) / sqrt(a_t); x_prev = sqrt(a_prev) "
    "x0_hat + sqrt(1 - a_prev) eps_hat, with a_t = alpha_bar_t and a_prev = "
    "alpha_bar_{t_prev}, taken as 1 when t_prev = -1.",
    mistakes={
        "uses alpha_t (schedule.alphas) instead of alpha_bar_t (alphas_cumprod)": (
            _mistake_ddim_step_alphas
        ),
        "forgets the t_prev = -1 case: alphas_cumprod[-1] is the noisiest level": (
            _mistake_ddim_step_prev_wraps
        ),
    },
)


# ch04.timesteps: the timesteps a sampler visits ("trailing" spacing)
def _has_tie(total: int, num_steps: int) -> bool:
    """Whether some T - i * T / num_steps ends in exactly .5, where round-half-to-even
    (Python, torch) and round-half-up (floor(x + 0.5)) disagree."""
    return any(2 * (i * total % num_steps) == num_steps for i in range(num_steps))


def _timestep_inputs(generator: torch.Generator) -> dict:
    # draw until there is no .5 tie, so that every reasonable rounding is right
    while True:
        total = int(torch.randint(10, 1001, (), generator=generator))
        num_steps = int(torch.randint(1, total + 1, (), generator=generator))
        if not _has_tie(total, num_steps):
            return {"num_train_timesteps": total, "num_steps": num_steps}


def _mistake_timesteps_no_minus_1(num_train_timesteps, num_steps):
    T, n = num_train_timesteps, num_steps
    return torch.tensor([round(T - i * T / n) for i in range(n)])  # starts at T


def _mistake_timesteps_floor_stride(num_train_timesteps, num_steps):
    T, n = num_train_timesteps, num_steps
    return torch.tensor([T - 1 - i * (T // n) for i in range(n)])


register(
    "ch04.timesteps",
    lambda num_train_timesteps, num_steps: torch.tensor(
        make_timesteps(num_train_timesteps, num_steps, "trailing")
    ),
    _timestep_inputs,
    hint="return a 1-D integer tensor (torch.long) of num_steps descending timesteps, "
    "element i = round(T - i * T / num_steps) - 1, so that the first one is T - 1.",
    mistakes={
        "forgets the - 1, so that the first timestep is T (out of range)": (
            _mistake_timesteps_no_minus_1
        ),
        "steps by the integer stride T // num_steps instead of rounding": (
            _mistake_timesteps_floor_stride
        ),
    },
)

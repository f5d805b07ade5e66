"""The forward (noising) process and the training objective.

Implements, for a `NoiseSchedule` (see schedules.py for the symbol legend):
  * `q_sample`, DDPM Eq. 4: q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)
  * `q_posterior`, DDPM Eq. 6-7: q(x_{t-1} | x_t, x_0) = N(mu_tilde_t, beta_tilde_t I)
  * conversions between the three things a network can predict:
      eps (the noise, DDPM Eq. 11), x_0, and
      v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0
      (Salimans & Ho 2022, "Progressive Distillation", Sec. 4)
  * `diffusion_loss`, DDPM Eq. 14: the simple loss
    L_simple = E ||target - model(x_t, t)||^2, with optional Min-SNR-gamma weighting
    (Hang et al. 2023).

Shapes: x_0, x_t, eps: [B, C, H, W]; t: [B] integer timesteps (0 is the first noising
step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .schedules import NoiseSchedule, extract

PREDICTION_TYPES = ("eps", "x0", "v")
LOSS_WEIGHTINGS = ("none", "min_snr")


def check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"unknown prediction_type {prediction_type!r}; "
            f"expected one of {PREDICTION_TYPES}"
        )


def q_sample(
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample x_t ~ q(x_t | x_0) in closed form:
    sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps.

    x0, noise: [B, C, H, W]; t: [B] integers in [0, T)."""
    if noise is None:
        noise = torch.randn_like(x0)
    if noise.shape != x0.shape:
        raise ValueError(
            f"noise shape {tuple(noise.shape)} must equal x0 shape {tuple(x0.shape)}"
        )
    return (
        extract(schedule.sqrt_alphas_cumprod, t, x0.shape, x0) * x0
        + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.shape, x0) * noise
    )


def q_posterior(
    schedule: NoiseSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
):
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (DDPM Eq. 6-7),
    each broadcastable to x."""
    mean = (
        extract(schedule.posterior_mean_coef1, t, x_t.shape, x_t) * x0
        + extract(schedule.posterior_mean_coef2, t, x_t.shape, x_t) * x_t
    )
    var = extract(schedule.posterior_variance, t, x_t.shape, x_t)
    log_var = extract(schedule.posterior_log_variance_clipped, t, x_t.shape, x_t)
    return mean, var, log_var


def predict_x0_from_eps(
    schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)  (DDPM Eq. 4 solved
    for x_0)."""
    return (
        extract(schedule.sqrt_recip_alphas_cumprod, t, x_t.shape, x_t) * x_t
        - extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t.shape, x_t) * eps
    )


def predict_eps_from_x0(
    schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor
) -> torch.Tensor:
    """eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t)."""
    return (
        extract(schedule.sqrt_recip_alphas_cumprod, t, x_t.shape, x_t) * x_t - x0
    ) / extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t.shape, x_t)


def v_from_x0_eps(
    schedule: NoiseSchedule, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """The velocity target v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0."""
    return (
        extract(schedule.sqrt_alphas_cumprod, t, x0.shape, x0) * eps
        - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.shape, x0) * x0
    )


def x0_from_v(
    schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """x_0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v."""
    return (
        extract(schedule.sqrt_alphas_cumprod, t, x_t.shape, x_t) * x_t
        - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t.shape, x_t) * v
    )


def eps_from_v(
    schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v."""
    return (
        extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t.shape, x_t) * x_t
        + extract(schedule.sqrt_alphas_cumprod, t, x_t.shape, x_t) * v
    )


def model_output_to_x0_eps(
    schedule: NoiseSchedule,
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    prediction_type: str = "eps",
):
    """Turn a network output of any prediction type into the pair (x0_hat, eps_hat)."""
    check_prediction_type(prediction_type)
    if prediction_type == "eps":
        return predict_x0_from_eps(schedule, x_t, t, model_output), model_output
    if prediction_type == "x0":
        return model_output, predict_eps_from_x0(schedule, x_t, t, model_output)
    return x0_from_v(schedule, x_t, t, model_output), eps_from_v(
        schedule, x_t, t, model_output
    )


def training_target(
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    eps: torch.Tensor,
    t: torch.Tensor,
    prediction_type: str = "eps",
) -> torch.Tensor:
    """What the network should output for (x_0, eps, t) under `prediction_type`."""
    check_prediction_type(prediction_type)
    if prediction_type == "eps":
        return eps
    if prediction_type == "x0":
        return x0
    return v_from_x0_eps(schedule, x0, eps, t)


def loss_weights(
    schedule: NoiseSchedule,
    t: torch.Tensor,
    prediction_type: str = "eps",
    weighting: str = "none",
    gamma: float = 5.0,
) -> torch.Tensor:
    """Per-sample weights [B]. "min_snr": weight the x_0-error by min(SNR, gamma)
    (Hang et al. 2023), expressed for the chosen prediction type."""
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(
            f"unknown loss weighting {weighting!r}; expected one of {LOSS_WEIGHTINGS}"
        )
    if weighting == "none":
        return torch.ones(t.shape[0], device=t.device)
    snr = schedule.snr.to(t.device)[t].float()
    clipped = snr.clamp(max=gamma)
    # ||eps - eps_hat||^2 = SNR ||x0 - x0_hat||^2 ;
    # ||v - v_hat||^2 = (SNR + 1) ||x0 - x0_hat||^2
    divisor = {"eps": snr, "x0": torch.ones_like(snr), "v": snr + 1}[prediction_type]
    return clipped / divisor


def diffusion_loss(
    model,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    model_kwargs: dict | None = None,
    prediction_type: str = "eps",
    weighting: str = "none",
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
    eps: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_simple: draw t ~ U{0..T-1} and eps ~ N(0, I), noise x_0, and regress the model
    onto the target.

    model(x_t: [B, C, H, W], t: [B], **model_kwargs) -> [B, C, H, W]. Returns a scalar.
    t [B] and eps (like x0), when given, are used instead of drawing them (a
    data-parallel loop draws them for the whole batch and gives each process its share).
    """
    if (t is None) != (eps is None):
        raise ValueError("pass both t and eps, or neither (then both are drawn)")
    if t is None:
        t, eps = draw_noise(schedule, x0, generator)
    elif t.shape != x0.shape[:1] or eps.shape != x0.shape:
        raise ValueError(
            f"t must be [B] and eps like x0 {tuple(x0.shape)}; got {tuple(t.shape)} "
            f"and {tuple(eps.shape)}"
        )
    x_t = q_sample(schedule, x0, t, eps)
    out = model(x_t, t, **(model_kwargs or {}))
    target = training_target(schedule, x0, eps, t, prediction_type)
    per_sample = F.mse_loss(out, target, reduction="none").flatten(1).mean(1)
    return (loss_weights(schedule, t, prediction_type, weighting) * per_sample).mean()


def draw_noise(
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(t [B] ~ U{0..T-1}, eps ~ N(0, I) shaped like x0), in that order from
    `generator`, on the generator's device (x0's without one): what diffusion_loss
    draws for a batch x0."""
    device = x0.device if generator is None else generator.device
    t = torch.randint(
        0, schedule.num_timesteps, x0.shape[:1], device=device, generator=generator
    )
    eps = torch.randn(x0.shape, device=device, dtype=x0.dtype, generator=generator)
    return t, eps

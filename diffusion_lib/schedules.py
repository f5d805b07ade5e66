"""Noise schedules for Gaussian diffusion.

Implements the variance schedules of
  * Ho, Jain & Abbeel (2020), "Denoising Diffusion Probabilistic Models" (DDPM), Sec. 4:
    the linear schedule beta_1 = 1e-4 ... beta_T = 0.02;
  * Nichol & Dhariwal (2021), "Improved DDPM", Eq. 17: the cosine schedule
    alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2), betas clipped at 0.999;
  * Rombach et al. (2022), latent diffusion / Stable Diffusion: the "scaled linear"
    schedule, linear in sqrt(beta).

and the tensors derived from them (DDPM Eq. 4, 6, 7). Legend, code name -> symbol:

    betas                         beta_t
    alphas                        alpha_t = 1 - beta_t
    alphas_cumprod                alpha_bar_t = prod_{s<=t} alpha_s
    alphas_cumprod_prev           alpha_bar_{t-1}   (alpha_bar_{-1} := 1)
    sqrt_one_minus_alphas_cumprod sqrt(1 - alpha_bar_t)
    posterior_variance            beta_tilde_t
                                    = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t
    posterior_mean_coef1          sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t)
                                    (multiplies x_0)
    posterior_mean_coef2          sqrt(alpha_t) (1 - alpha_bar_{t-1})/(1 - alpha_bar_t)
                                    (multiplies x_t)
    snr                           alpha_bar_t / (1 - alpha_bar_t)

Convention: t is an integer index 0 .. T-1; t = 0 is the *first* noising step
(the paper's t = 1). All schedule tensors are computed and stored in float64 and
converted to the dtype and device of the data by `extract`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEDULES = ("linear", "scaled_linear", "cosine", "sigmoid")


def linear_beta_schedule(
    num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    """DDPM's linear schedule: betas evenly spaced from beta_start to beta_end.

    Shape [T], float64."""
    _check_timesteps(num_timesteps)
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def scaled_linear_beta_schedule(
    num_timesteps: int, beta_start: float = 0.00085, beta_end: float = 0.012
) -> torch.Tensor:
    """Stable Diffusion's schedule: sqrt(beta) evenly spaced, then squared.

    Shape [T], float64."""
    _check_timesteps(num_timesteps)
    return (
        torch.linspace(
            beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64
        )
        ** 2
    )


def cosine_alpha_bar(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """The continuous alpha_bar(t) of Improved DDPM Eq. 17, for t in [0, 1]."""
    return torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2


def cosine_beta_schedule(
    num_timesteps: int, s: float = 0.008, max_beta: float = 0.999
) -> torch.Tensor:
    """Improved DDPM's cosine schedule: beta_t = 1 - alpha_bar(t+1)/alpha_bar(t),
    clipped at max_beta.

    Identical to diffusers' ``beta_schedule="squaredcos_cap_v2"``. Shape [T], float64.
    """
    _check_timesteps(num_timesteps)
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    alpha_bar = cosine_alpha_bar(steps, s)
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def sigmoid_beta_schedule(
    num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    """A sigmoid-shaped ramp between beta_start and beta_end (as in diffusers'
    "sigmoid"). Shape [T], float64."""
    _check_timesteps(num_timesteps)
    ramp = torch.sigmoid(torch.linspace(-6, 6, num_timesteps, dtype=torch.float64))
    return ramp * (beta_end - beta_start) + beta_start


def make_betas(kind: str, num_timesteps: int, **kwargs) -> torch.Tensor:
    """Betas for a named schedule, one of SCHEDULES."""
    makers = {
        "linear": linear_beta_schedule,
        "scaled_linear": scaled_linear_beta_schedule,
        "cosine": cosine_beta_schedule,
        "sigmoid": sigmoid_beta_schedule,
    }
    if kind not in makers:
        raise ValueError(f"unknown schedule {kind!r}; expected one of {SCHEDULES}")
    return makers[kind](num_timesteps, **kwargs)


def _check_timesteps(num_timesteps: int) -> None:
    if not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(
            f"num_timesteps must be a positive integer, got {num_timesteps!r}"
        )


@dataclass(frozen=True)
class NoiseSchedule:
    """Every tensor of a discrete Gaussian diffusion, derived from its betas (all [T],
    float64).

    Build one with ``NoiseSchedule.from_betas(betas)`` or
    ``NoiseSchedule.make("cosine", 1000)``.
    """

    betas: torch.Tensor
    alphas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor
    snr: torch.Tensor
    kind: str = "custom"

    @classmethod
    def from_betas(cls, betas: torch.Tensor, kind: str = "custom") -> NoiseSchedule:
        betas = torch.as_tensor(betas, dtype=torch.float64).cpu()
        if betas.ndim != 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a 1-D tensor with every value in (0, 1)")
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat(
            [torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]]
        )
        posterior_variance = (
            betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        )
        # posterior_variance[0] is 0; log-clip it with the next value, as
        # improved-diffusion does.
        log_var = torch.log(
            torch.cat([posterior_variance[1:2], posterior_variance[1:]])
        )
        return cls(
            betas=betas,
            alphas=alphas,
            alphas_cumprod=alphas_cumprod,
            alphas_cumprod_prev=alphas_cumprod_prev,
            sqrt_alphas_cumprod=alphas_cumprod.sqrt(),
            sqrt_one_minus_alphas_cumprod=(1.0 - alphas_cumprod).sqrt(),
            sqrt_recip_alphas_cumprod=(1.0 / alphas_cumprod).sqrt(),
            sqrt_recipm1_alphas_cumprod=(1.0 / alphas_cumprod - 1).sqrt(),
            posterior_variance=posterior_variance,
            posterior_log_variance_clipped=log_var,
            posterior_mean_coef1=betas
            * alphas_cumprod_prev.sqrt()
            / (1.0 - alphas_cumprod),
            posterior_mean_coef2=(1.0 - alphas_cumprod_prev)
            * alphas.sqrt()
            / (1.0 - alphas_cumprod),
            snr=alphas_cumprod / (1.0 - alphas_cumprod),
            kind=kind,
        )

    @classmethod
    def make(
        cls, kind: str = "cosine", num_timesteps: int = 1000, **kwargs
    ) -> NoiseSchedule:
        """A schedule by name (one of SCHEDULES) and length T."""
        return cls.from_betas(make_betas(kind, num_timesteps, **kwargs), kind=kind)

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    def __repr__(self) -> str:
        return (
            f"NoiseSchedule(kind={self.kind!r}, T={self.num_timesteps}, "
            f"alpha_bar_T={self.alphas_cumprod[-1].item():.3g})"
        )


def extract(
    a: torch.Tensor,
    t: torch.Tensor,
    x_shape: torch.Size | tuple,
    like: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gather a[t] for a batch of timesteps and reshape it to broadcast against x.

    a: [T] schedule tensor; t: [B] integer timesteps in [0, T); x_shape: (B, C, H, W) or
    any (B, ...).
    Returns [B, 1, 1, 1] (one trailing 1 per non-batch dim of x), on t's device, in the
    dtype of `like` (float32 by default).
    """
    if t.ndim != 1 or t.shape[0] != x_shape[0]:
        raise ValueError(
            f"t must have shape [B] = [{x_shape[0]}], got {tuple(t.shape)}"
        )
    if t.dtype.is_floating_point:
        raise ValueError("t must be an integer tensor of timestep indices")
    if bool(((t < 0) | (t >= a.shape[0])).any()):  # a[-1] would silently mean a[T-1]
        raise ValueError(
            f"t must be in [0, {a.shape[0]}) (0 is the first noising step), "
            f"got values from {int(t.min())} to {int(t.max())}"
        )
    dtype = like.dtype if like is not None else torch.float32
    out = a.to(t.device)[t].to(dtype)
    return out.reshape(x_shape[0], *([1] * (len(x_shape) - 1)))

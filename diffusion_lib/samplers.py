"""Reverse-process samplers: DDPM ancestral sampling, DDIM, classifier-free guidance.

Implements
  * the DDPM ancestral step (Ho et al. 2020, Algorithm 2 and Eq. 6-7, 11), generalised
    to skip from t to any earlier t_prev (as diffusers' DDPMScheduler with few steps);
  * the DDIM step (Song, Meng & Ermon 2021, Eq. 12 and 16) with stochasticity eta:
    eta = 0 is deterministic, eta = 1 has the DDPM posterior variance;
  * classifier-free guidance (Ho & Salimans 2022, Eq. 6):
    eps_guided = eps_uncond + w (eps_cond - eps_uncond). The paper writes
    (1 + w_paper) eps_cond - w_paper eps_uncond, the same formula with w = 1 + w_paper
    (so our w = 1 is plain conditional sampling, the paper's w = 0);
  * the samplers as objects, configured once (`DDIMSampler(schedule, eta=0.0,
    prediction_type="eps")`), with one step signature, as diffusers' schedulers have
    it: `sampler.step(model_output, t, t_prev, x_t, *, generator) -> StepOutput(
    prev_sample, pred_original_sample)`; `ddpm_step` and `ddim_step` are the same steps
    as functions, with the same argument order;
  * `sample`, the loop that ties them together, with `generator=`; it returns a
    SampleOutput (the samples x0 and, when kept, the trajectory).

Legend (see schedules.py): a_t = alpha_bar_t, a_prev = alpha_bar_{t_prev} (1 when
t_prev < 0), x0_hat = predicted x_0, eps_hat = predicted noise. t is an integer index,
0 = first noising step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .forward import check_prediction_type, model_output_to_x0_eps, predict_eps_from_x0
from .schedules import NoiseSchedule
from .setup import progress_bar

SAMPLERS = ("ddpm", "ddim")
SPACINGS = ("trailing", "leading", "linspace")
VARIANCE_TYPES = ("fixed_small", "fixed_large")


def randn(
    shape, generator: torch.Generator | None = None, device=None, dtype=torch.float32
) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device (so seeds agree across
    devices), then moved to `device`."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(
        device
    )


def _alpha_bars(schedule: NoiseSchedule, t: int, t_prev: int):
    a_t = schedule.alphas_cumprod[t].item()
    a_prev = schedule.alphas_cumprod[t_prev].item() if t_prev >= 0 else 1.0
    return a_t, a_prev


def _x0_eps(schedule, model_output, t, x_t, prediction_type, clip_sample, clip_range):
    t_batch = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
    x0_hat, eps_hat = model_output_to_x0_eps(
        schedule, model_output, x_t, t_batch, prediction_type
    )
    if clip_sample:
        # clip x_0 and keep eps consistent with it (improved-diffusion; diffusers'
        # use_clipped_model_output)
        x0_hat = x0_hat.clamp(-clip_range, clip_range)
        eps_hat = predict_eps_from_x0(schedule, x_t, t_batch, x0_hat)
    return x0_hat, eps_hat


def ddpm_step(
    schedule: NoiseSchedule,
    model_output: torch.Tensor,
    t: int,
    t_prev: int,
    x_t: torch.Tensor,
    *,
    prediction_type: str = "eps",
    variance_type: str = "fixed_small",
    clip_sample: bool = True,
    clip_range: float = 1.0,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One ancestral step x_t -> x_{t_prev} ~ p(x_{t_prev} | x_t) (t_prev = t - 1 for
    Ho et al.'s step; t_prev = -1 means "to clean data").

    x_t, model_output: [B, C, H, W]."""
    if variance_type not in VARIANCE_TYPES:
        raise ValueError(
            f"unknown variance_type {variance_type!r}; expected one of {VARIANCE_TYPES}"
        )
    a_t, a_prev = _alpha_bars(schedule, t, t_prev)
    # the beta of the (possibly skipping) step; = betas[t] when t_prev = t - 1
    beta_t = 1 - a_t / a_prev
    # 1. predict x_0 from the network output (Eq. 15 for eps-prediction)
    x0_hat, _ = _x0_eps(
        schedule, model_output, t, x_t, prediction_type, clip_sample, clip_range
    )
    # 2. posterior mean mu_tilde(x_t, x0_hat) (Eq. 7)
    coef1 = a_prev**0.5 * beta_t / (1 - a_t)
    coef2 = (1 - beta_t) ** 0.5 * (1 - a_prev) / (1 - a_t)
    mean = coef1 * x0_hat + coef2 * x_t
    if t == 0 or t_prev < 0:
        return mean  # the last step returns the mean, no noise
    # 3. variance: beta_tilde_t (posterior, "fixed_small") or beta_t ("fixed_large")
    #    (Sec. 3.2)
    variance = (
        max((1 - a_prev) / (1 - a_t) * beta_t, 1e-20)
        if variance_type == "fixed_small"
        else beta_t
    )
    # 4. x_{t-1} = mu + sigma z
    if noise is None:
        noise = randn(x_t.shape, generator, x_t.device, x_t.dtype)
    return mean + variance**0.5 * noise


def ddim_step(
    schedule: NoiseSchedule,
    model_output: torch.Tensor,
    t: int,
    t_prev: int,
    x_t: torch.Tensor,
    *,
    eta: float = 0.0,
    prediction_type: str = "eps",
    clip_sample: bool = False,
    clip_range: float = 1.0,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One DDIM step x_t -> x_{t_prev} (t_prev = -1 means "to clean data").

    x_t, model_output: [B, C, H, W]."""
    _check_eta(eta)
    a_t, a_prev = _alpha_bars(schedule, t, t_prev)
    # 1. predict x_0 and eps from the network output
    x0_hat, eps_hat = _x0_eps(
        schedule, model_output, t, x_t, prediction_type, clip_sample, clip_range
    )
    # 2. sigma_t(eta) (Eq. 16)
    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
    # 3. "direction pointing to x_t" (Eq. 12, middle term)
    #    (>= 0 for eta <= 1; max() guards against rounding to -1e-17: complex root)
    direction = max(1 - a_prev - sigma**2, 0.0) ** 0.5 * eps_hat
    # 4. x_{t-1} = sqrt(a_prev) x0_hat + direction + sigma z  (Eq. 12)
    x_prev = a_prev**0.5 * x0_hat + direction
    if sigma > 0:
        if noise is None:
            noise = randn(x_t.shape, generator, x_t.device, x_t.dtype)
        x_prev = x_prev + sigma * noise
    return x_prev


def _check_eta(eta: float) -> None:
    if not 0.0 <= eta <= 1.0:
        raise ValueError(
            f"eta must be in [0, 1] (0: deterministic DDIM, 1: DDPM's variance), got "
            f"{eta}; with eta > 1 the variance 1 - a_prev - sigma^2 of the direction "
            "term would be negative"
        )


def make_timesteps(
    num_train_timesteps: int, num_steps: int, spacing: str = "trailing"
) -> list[int]:
    """The descending timesteps a sampler visits.

    "trailing" starts at T-1 (Lin et al. 2024 recommend it), "leading" is diffusers'
    DDIM default (0, k, 2k, ... reversed), "linspace" rounds an even grid from T-1 to 0.
    """
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(
            f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}"
        )
    if spacing == "trailing":
        ratio = num_train_timesteps / num_steps
        steps = [round(num_train_timesteps - i * ratio) - 1 for i in range(num_steps)]
    elif spacing == "leading":
        ratio = num_train_timesteps // num_steps
        steps = [i * ratio for i in range(num_steps)][::-1]
    elif spacing == "linspace":
        steps = (
            torch.linspace(num_train_timesteps - 1, 0, num_steps)
            .round()
            .long()
            .tolist()
        )
    else:
        raise ValueError(f"unknown spacing {spacing!r}; expected one of {SPACINGS}")
    return steps


@dataclass(frozen=True)
class StepOutput:
    """What one reverse step gives: x_{t_prev} and the x_0 it predicted on the way
    (clipped as the step clipped it)."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


@dataclass(frozen=True)
class SampleOutput:
    """What `sample` gives: the samples x0 [B, C, H, W] and, with keep_trajectory,
    every x_t (on the CPU) from x_T to x0 (None otherwise)."""

    x0: torch.Tensor
    trajectory: list | None = None


class Sampler:
    """A reverse-process sampler, configured once: the schedule, what the network
    predicts ("eps", "x0" or "v"), whether x0_hat is clipped to [-clip_range,
    clip_range] (pixels: yes; latents and embeddings: no), and how `num_steps` steps
    are spread over the T timesteps (make_timesteps' spacing)."""

    name = "sampler"
    step_function = None  # ddpm_step or ddim_step: what `step` computes

    def __init__(
        self,
        schedule: NoiseSchedule,
        *,
        prediction_type: str = "eps",
        clip_sample: bool = True,
        clip_range: float = 1.0,
        spacing: str = "trailing",
    ):
        check_prediction_type(prediction_type)
        if spacing not in SPACINGS:
            raise ValueError(f"unknown spacing {spacing!r}; expected one of {SPACINGS}")
        self.schedule, self.prediction_type = schedule, prediction_type
        self.clip_sample, self.clip_range = clip_sample, clip_range
        self.spacing = spacing

    def timesteps(self, num_steps: int, start_step: int | None = None) -> list[int]:
        """The descending timesteps of a run of num_steps steps, from T - 1 (or from
        start_step: the steps spread over [0, start_step])."""
        T = self.schedule.num_timesteps
        if start_step is not None and not 0 <= start_step < T:
            raise ValueError(f"start_step must be in [0, {T - 1}], got {start_step}")
        span = T if start_step is None else start_step + 1
        return make_timesteps(span, num_steps, self.spacing)

    def pred_original_sample(self, model_output, t: int, x_t) -> torch.Tensor:
        """x0_hat at step t, clipped as the step clips it."""
        x0_hat, _ = _x0_eps(
            self.schedule,
            model_output,
            t,
            x_t,
            self.prediction_type,
            self.clip_sample,
            self.clip_range,
        )
        return x0_hat

    def step(
        self, model_output, t: int, t_prev: int, x_t, *, generator=None, noise=None
    ) -> StepOutput:
        """x_t -> StepOutput(x_{t_prev}, x0_hat); the noise (where the step adds
        some) from `generator`, or `noise` itself."""
        prev = self.step_function(
            self.schedule,
            model_output,
            t,
            t_prev,
            x_t,
            noise=noise,
            generator=generator,
            **self._options(),
        )
        return StepOutput(prev, self.pred_original_sample(model_output, t, x_t))

    def _options(self) -> dict:
        """The step function's keyword options."""
        return {
            "prediction_type": self.prediction_type,
            "clip_sample": self.clip_sample,
            "clip_range": self.clip_range,
        }

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self._options().items())
        return f"{type(self).__name__}({options})"


class DDPMSampler(Sampler):
    """Ancestral sampling (Ho et al. 2020, Algorithm 2), skipping from t to any earlier
    t_prev; variance_type "fixed_small" (the posterior's beta_tilde) or
    "fixed_large" (beta)."""

    name = "ddpm"
    step_function = staticmethod(ddpm_step)

    def __init__(self, schedule, *, variance_type: str = "fixed_small", **options):
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(
                f"unknown variance_type {variance_type!r}; expected one of "
                f"{VARIANCE_TYPES}"
            )
        super().__init__(schedule, **options)
        self.variance_type = variance_type

    def _options(self) -> dict:
        return {**super()._options(), "variance_type": self.variance_type}


class DDIMSampler(Sampler):
    """DDIM (Song, Meng & Ermon 2021): eta = 0 deterministic, eta = 1 the DDPM
    posterior's variance."""

    name = "ddim"
    step_function = staticmethod(ddim_step)

    def __init__(self, schedule, *, eta: float = 0.0, **options):
        _check_eta(eta)
        super().__init__(schedule, **options)
        self.eta = eta

    def _options(self) -> dict:
        return {**super()._options(), "eta": self.eta}


SAMPLER_CLASSES = {"ddpm": DDPMSampler, "ddim": DDIMSampler}


def make_sampler(name: str, schedule: NoiseSchedule, **options) -> Sampler:
    """The sampler called `name` ("ddpm" or "ddim"), configured with `options` (eta for
    DDIM alone, variance_type for DDPM alone)."""
    if name not in SAMPLER_CLASSES:
        raise ValueError(f"unknown sampler {name!r}; expected one of {SAMPLERS}")
    return SAMPLER_CLASSES[name](schedule, **options)


def _concat_kwargs(a: dict, b: dict) -> dict:
    if a.keys() != b.keys():
        raise ValueError(
            "conditional and unconditional kwargs need the same keys, got "
            f"{sorted(a)} and {sorted(b)}"
        )
    return {k: torch.cat([a[k], b[k]]) if torch.is_tensor(a[k]) else a[k] for k in a}


def cfg_combine(
    out_cond: torch.Tensor, out_uncond: torch.Tensor, guidance_scale: float
) -> torch.Tensor:
    """Classifier-free guidance: out_uncond + w (out_cond - out_uncond).

    This is Ho & Salimans (2022), Eq. 6, (1 + w_paper) out_cond - w_paper out_uncond,
    with w = 1 + w_paper.
    """
    return out_uncond + guidance_scale * (out_cond - out_uncond)


def guided_model_output(
    model,
    x_t: torch.Tensor,
    t: torch.Tensor,
    model_kwargs: dict | None = None,
    uncond_kwargs: dict | None = None,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """Classifier-free guidance: out_uncond + w (out_cond - out_uncond), in one batched
    forward pass.

    w = 1 is plain conditional sampling, w = 0 unconditional, w > 1 trades diversity for
    fidelity. Our w is 1 + the w of Ho & Salimans (2022), Eq. 6 (see `cfg_combine`).
    """
    model_kwargs = model_kwargs or {}
    if uncond_kwargs is None or guidance_scale == 1.0:
        return model(x_t, t, **model_kwargs)
    both = model(
        torch.cat([x_t, x_t]),
        torch.cat([t, t]),
        **_concat_kwargs(model_kwargs, uncond_kwargs),
    )
    return cfg_combine(*both.chunk(2), guidance_scale)


@torch.no_grad()
def sample(
    model,
    sampler: Sampler,
    shape,
    *,
    num_steps: int = 50,
    model_kwargs: dict | None = None,
    uncond_kwargs: dict | None = None,
    guidance_scale: float = 1.0,
    generator: torch.Generator | None = None,
    device=None,
    x_T: torch.Tensor | None = None,
    start_step: int | None = None,
    keep_trajectory: bool = False,
    progress: bool = False,
) -> SampleOutput:
    """Generate samples by running the reverse process from pure noise x_T ~ N(0, I),
    drawn from `generator` (or from the given x_T), with `sampler`'s steps.

    shape: (B, C, H, W). Returns SampleOutput(x0 [B, C, H, W], trajectory: with
    keep_trajectory, the list of x_t (on the CPU) after each step, starting with x_T).
    start_step: begin at this timestep instead of T - 1, the num_steps spread over
    [0, start_step]; x_T must then be a sample of x_{start_step}, e.g. a noised image
    (SDEdit, Meng et al. 2022).
    """
    if not isinstance(sampler, Sampler):
        raise TypeError(
            f"sampler must be a Sampler (samplers.DDIMSampler(schedule, ...) or "
            f"make_sampler(name, schedule)), got {type(sampler).__name__}"
        )
    if x_T is not None and tuple(x_T.shape) != tuple(shape):
        raise ValueError(
            f"x_T has shape {tuple(x_T.shape)} but shape is {tuple(shape)}: "
            "pass x_T of exactly `shape` (B, C, H, W)"
        )
    steps = sampler.timesteps(num_steps, start_step)
    if start_step is not None and x_T is None:
        raise ValueError("with start_step, pass x_T: a sample of x_{start_step}")
    device = device if device is not None else next(model.parameters()).device
    x = x_T.to(device) if x_T is not None else randn(tuple(shape), generator, device)
    trajectory = [x.cpu()] if keep_trajectory else None
    for i, t in enumerate(progress_bar(steps, progress, sampler.name)):
        t_prev = steps[i + 1] if i + 1 < len(steps) else -1
        t_batch = torch.full((x.shape[0],), t, device=device, dtype=torch.long)
        out = guided_model_output(
            model, x, t_batch, model_kwargs, uncond_kwargs, guidance_scale
        )
        x = sampler.step(out, t, t_prev, x, generator=generator).prev_sample
        if keep_trajectory:
            trajectory.append(x.cpu())
    return SampleOutput(x, trajectory)

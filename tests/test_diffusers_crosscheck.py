"""The library's forward process and samplers agree with diffusers' schedulers to
1e-5."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from diffusion_lib.forward import q_sample
from diffusion_lib.samplers import (
    DDIMSampler,
    ddim_step,
    ddpm_step,
    make_timesteps,
    sample,
)
from diffusion_lib.schedules import NoiseSchedule

SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
PREDICTION = {"eps": "epsilon", "v": "v_prediction"}
TOL = dict(atol=1e-5, rtol=1e-5)


def ours(kind):
    return NoiseSchedule.make(kind, 1000)


def in_float64(sched, kind):
    """diffusers keeps its schedule in float32, where 1 - alpha_bar_t loses ~3 digits
    near t = 0. Give it our float64 schedule tensors (the float32 ones agree to 1e-5,
    see test_add_noise), so that the step tests compare the algebra of each step at the
    same precision."""
    s = ours(kind)
    sched.betas, sched.alphas, sched.alphas_cumprod = (
        s.betas.clone(),
        s.alphas.clone(),
        s.alphas_cumprod.clone(),
    )
    return sched


def _inputs(seed=0, shape=(4, 3, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


@pytest.mark.parametrize("kind", SCHEDULES)
def test_add_noise(kind):
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule=SCHEDULES[kind])
    x0, noise = _inputs()
    t = torch.tensor([0, 250, 640, 999])
    torch.testing.assert_close(
        q_sample(ours(kind), x0, t, noise), sched.add_noise(x0, noise, t), **TOL
    )
    torch.testing.assert_close(
        ours(kind).alphas_cumprod.float(), sched.alphas_cumprod, **TOL
    )


@pytest.mark.parametrize("kind", SCHEDULES)
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("prediction_type", ["eps", "v"])
@pytest.mark.parametrize("clip_sample", [True, False])
@pytest.mark.parametrize("t", [999, 500, 37, 1, 0])
def test_ddpm_step(kind, variance_type, prediction_type, clip_sample, t):
    sched = in_float64(
        DDPMScheduler(
            num_train_timesteps=1000,
            beta_schedule=SCHEDULES[kind],
            variance_type=variance_type,
            prediction_type=PREDICTION[prediction_type],
            clip_sample=clip_sample,
        ),
        kind,
    )
    x_t, out = _inputs(t)
    want = sched.step(
        out, t, x_t, generator=torch.Generator().manual_seed(7)
    ).prev_sample
    got = ddpm_step(
        ours(kind),
        out,
        t,
        t - 1,
        x_t,
        prediction_type=prediction_type,
        variance_type=variance_type,
        clip_sample=clip_sample,
        generator=torch.Generator().manual_seed(7),
    )
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("kind", SCHEDULES)
def test_ddpm_step_with_skipped_timesteps(kind):
    sched = in_float64(
        DDPMScheduler(num_train_timesteps=1000, beta_schedule=SCHEDULES[kind]), kind
    )
    sched.set_timesteps(50)
    x_t, out = _inputs(3)
    for t in sched.timesteps[:3].tolist() + [sched.timesteps[-1].item()]:
        want = sched.step(
            out, t, x_t, generator=torch.Generator().manual_seed(1)
        ).prev_sample
        got = ddpm_step(
            ours(kind),
            out,
            t,
            t - 20,
            x_t,
            generator=torch.Generator().manual_seed(1),
        )
        torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("kind", SCHEDULES)
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("prediction_type", ["eps", "v"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("clip_sample", [False, True])
def test_ddim_step(kind, eta, prediction_type, spacing, clip_sample):
    """With clipping, the library recomputes eps from the clipped x_0 (diffusers:
    use_clipped_model_output=True)."""
    sched = in_float64(
        DDIMScheduler(
            num_train_timesteps=1000,
            beta_schedule=SCHEDULES[kind],
            clip_sample=clip_sample,
            set_alpha_to_one=True,
            prediction_type=PREDICTION[prediction_type],
            timestep_spacing=spacing,
        ),
        kind,
    )
    sched.set_timesteps(50)
    steps = make_timesteps(1000, 50, spacing)
    assert steps == sched.timesteps.tolist()
    x_t, out = _inputs(5)
    for i in (0, 1, 25, 49):
        t = steps[i]
        t_prev = steps[i + 1] if i + 1 < len(steps) else -1
        if spacing == "leading" or i + 1 < len(
            steps
        ):  # diffusers' last trailing step goes to t - ratio
            theirs = sched.step(
                out,
                t,
                x_t,
                eta=eta,
                use_clipped_model_output=clip_sample,
                generator=torch.Generator().manual_seed(2),
            )
            want = theirs.prev_sample
            # the sampler object: both of DDIMScheduler's outputs
            sampler = DDIMSampler(
                ours(kind),
                eta=eta,
                prediction_type=prediction_type,
                clip_sample=clip_sample,
                spacing=spacing,
            )
            step = sampler.step(
                out, t, t_prev, x_t, generator=torch.Generator().manual_seed(2)
            )
            torch.testing.assert_close(step.prev_sample, want, **TOL)
            # x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t) reaches ~20 near t = T: float
            # rounding there is relative
            torch.testing.assert_close(
                step.pred_original_sample,
                theirs.pred_original_sample,
                rtol=1e-4,
                atol=1e-5,
            )
            got = ddim_step(
                ours(kind),
                out,
                t,
                t_prev,
                x_t,
                eta=eta,
                prediction_type=prediction_type,
                clip_sample=clip_sample,
                generator=torch.Generator().manual_seed(2),
            )
            torch.testing.assert_close(got, want, **TOL)


class _Smooth(torch.nn.Module):
    """A fixed, smooth stand-in for a trained network (deterministic in x and t)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.3), requires_grad=False)

    def forward(self, x, t, **kw):
        return self.w * torch.tanh(x) + 0.01 * (t.float() / 1000)[:, None, None, None]


@pytest.mark.parametrize("kind", SCHEDULES)
def test_full_ddim_loop_matches_diffusers(kind):
    model, x_T = _Smooth(), _inputs(11)[0]
    sched = in_float64(
        DDIMScheduler(
            num_train_timesteps=1000,
            beta_schedule=SCHEDULES[kind],
            clip_sample=False,
            set_alpha_to_one=True,
        ),
        kind,
    )
    sched.set_timesteps(20)
    x = x_T.clone()
    for t in sched.timesteps:
        x = sched.step(model(x, t.expand(4)), t, x, eta=0.0).prev_sample
    got = sample(
        model,
        DDIMSampler(ours(kind), spacing="leading", clip_sample=False),
        x_T.shape,
        num_steps=20,
        x_T=x_T,
    ).x0
    torch.testing.assert_close(got, x, **TOL)

"""Chapter 9's upsampler: 32x32 -> 64x64, a pixel UNet that sees the noisy large
image beside the enlarged small one."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import torch

from .. import pretrained
from ..data import SCENE_SIZE, make_scenes
from ..forward import model_output_to_x0_eps, q_sample
from ..pipelines import MiniDALLE2
from ..schedules import NoiseSchedule
from ..train import (
    UpsamplerTrainConfig,
    save_checkpoint,
    train_upsampler,
    write_manifest,
)
from ..unclip import UnCLIPUpsampler, downsample, enlarge
from ..unet import UNetConfig
from ..vae import psnr
from .base import (
    Recipe,
    decay_fields,
    run_fields,
    seed_of,
    train_budgets,
    train_twin,
)
from .dalle2 import UNCLIP_SCHEDULE, unclip_fields, unclip_training_scenes
from .measure import upsampler_psnr

SCENES_UPSAMPLER = UNetConfig(
    in_channels=6,  # the noisy 64x64 image + the enlarged 32x32 one
    out_channels=3,
    base_channels=32,
    channel_mults=(1, 2, 2),
    attention_levels=(),
    mid_attention=False,
)
SCENES_UPSAMPLER_TRAIN = UpsamplerTrainConfig(
    # the upsampler's share of the mini DALL-E 2's budget (chapter 10; scenes_prior)
    steps=1328,
    batch_size=64,
    lr=1e-3,
    warmup=100,
    lr_schedule="constant",  # its checkpoints along the run are chapter 10's budgets
    ema_decay=0.999,
    p_uncond=0.0,  # no guidance
    # v, not eps: it samples from pure noise, as the paper's upsamplers do. From
    # x_t, x0 = (x_t - sqrt(1 - a) eps) / sqrt(a) magnifies an error in eps by
    # 1 / sqrt(a), up to 20,000 at t = 999 on this schedule; from v, x0 = sqrt(a) x_t -
    # sqrt(1 - a) v magnifies nothing (chapter 9 measures both: the eps twin)
    prediction_type="v",
    loss_weighting="none",
    seed=0,
    crop=32,
    factor=2,
)
# a smoke run: through warm-up, every file written (8 steps: 4 distinct budgets)
SCENES_UPSAMPLER_QUICK = replace(
    SCENES_UPSAMPLER_TRAIN, steps=8, warmup=2, batch_size=8
)
# the twin that predicts eps: the same initial weights and batches, for the steps of
# the quarter-run checkpoint it is compared with (the parameterisation, measured)
EPS_TWIN = "eps"
# (first timestep, DDIM steps) measured: from pure noise (t = 999, the default) and
# from the enlarged low-resolution image noised to t = 700 (SDEdit's start, which the
# first, eps-predicting upsampler needed), each timed
UPSAMPLER_SETTINGS = ((999, 10), (700, 10))
UPSAMPLER_DEFAULT_STEPS = 10
UPSAMPLER_START = 999
# timesteps at which the one-step estimate of x0 is measured (x0_psnr_by_t)
X0_TIMESTEPS = (50, 200, 400, 600, 800, 900, 999)


def train_scenes_upsampler(
    out_dir, *, quick=False, seed=0, device="cpu", accelerator=None
):
    """The 32 -> 64 upsampler, on random 32x32 crops of the unCLIP training scenes,
    and its eps twin for a quarter of the run."""
    cfg = replace(
        SCENES_UPSAMPLER_QUICK if quick else SCENES_UPSAMPLER_TRAIN, seed=seed
    )
    scenes = unclip_training_scenes(quick, seed)
    schedule = NoiseSchedule.make(
        UNCLIP_SCHEDULE["kind"], UNCLIP_SCHEDULE["num_timesteps"]
    )
    static = {
        "config": SCENES_UPSAMPLER.to_dict(),
        "schedule": UNCLIP_SCHEDULE,
        "prediction_type": cfg.prediction_type,
        "image_size": SCENE_SIZE,
        "sampling_steps": UPSAMPLER_DEFAULT_STEPS,
        "sampling_start": UPSAMPLER_START,
    }
    name = "scenes-upsampler"

    def trainer(accelerator=None):
        def train(upsampler, config, **kw):
            return train_upsampler(
                upsampler,
                schedule,
                scenes.images,
                config,
                accelerator=accelerator,
                **kw,
            )

        return train

    torch.manual_seed(seed)
    model = UnCLIPUpsampler(SCENES_UPSAMPLER)
    result, last, budgets, decays = train_budgets(
        name,
        out_dir,
        cfg,
        run_fields(name, cfg, seed, quick, static),
        model,
        trainer(accelerator),
        accelerator=accelerator,
    )
    fields = unclip_fields(
        name,
        cfg,
        result,
        seed=seed,
        quick=quick,
        device="cpu",
        accelerator=accelerator,
    )
    twin_cfg = replace(cfg, steps=budgets[1], prediction_type="eps")
    torch.manual_seed(seed)  # the same initial weights
    twin_model = UnCLIPUpsampler(SCENES_UPSAMPLER)
    twin_static = {**static, "prediction_type": "eps", "sampling_start": 999}
    twin_fields = run_fields(name, twin_cfg, seed, quick, twin_static)
    twin = train_twin(
        name, out_dir, EPS_TWIN, twin_fields, twin_cfg, twin_model, trainer()
    )
    info = {
        **fields,
        **decay_fields(cfg, result, last),
        **static,
        "budget_steps": list(budgets),
        "budget_cooldown_steps": decays,
        "twins": {EPS_TWIN: twin},
        "training_images": len(scenes),
    }
    path = pretrained.checkpoint_path(name, out_dir)
    return save_checkpoint(path, last.ema.model, info, accelerator=accelerator)


def upsampler_pipe(model, info) -> MiniDALLE2:
    """A pipeline holding only the upsampler (and its schedule and prediction)."""
    return MiniDALLE2(
        upsampler=model,
        upsampler_schedule=pretrained.schedule_from_manifest(info),
        upsampler_prediction=info["prediction_type"],
        upsampler_steps=info["sampling_steps"],
    )


def timed_psnr(pipe, high, num_steps, seed, start) -> dict:
    """upsampler_psnr at one setting, with the seconds it took."""
    begin = time.perf_counter()
    row = upsampler_psnr(pipe, high, num_steps, seed, start)
    return {**row, "seconds": round(time.perf_counter() - begin, 2)}


@torch.no_grad()
def x0_psnr_by_t(model, info, high, seed, timesteps=X0_TIMESTEPS) -> dict:
    """The upsampler's one-step estimate of x0 from x_t (real images noised to t,
    clipped to [-1, 1]) against the real image, PSNR (dB) at each t: where along the
    reverse process a prediction type loses the image."""
    schedule = pretrained.schedule_from_manifest(info)
    low = enlarge(downsample(high, 2), high.shape[-1])
    gen = torch.Generator().manual_seed(seed_of(seed, "upsampler x0 noise"))
    noise = torch.randn(high.shape, generator=gen)
    out = {}
    for step in timesteps:
        t = torch.full((high.shape[0],), step, dtype=torch.long)
        x_t = q_sample(schedule, high, t, noise)
        pred = model(x_t, t, low_res=low)
        x0, _ = model_output_to_x0_eps(schedule, pred, x_t, t, info["prediction_type"])
        out[str(step)] = psnr(x0.clamp(-1, 1), high).mean().item()
    return out


def measure_upsampler(out_dir=None, *, quick=False, seed=0, device="cpu") -> dict:
    """PSNR of the upsampler against bicubic enlargement at each of
    UPSAMPLER_SETTINGS (timed), its one-step x0 by t, and the parameterisation
    measured: the v upsampler's quarter-run checkpoint against its eps twin (same
    initial weights, batches and steps), from pure noise and from SDEdit's start."""
    name = "scenes-upsampler"
    model, info = pretrained.load_pretrained(name, None, out_dir)
    pipe = upsampler_pipe(model, info)
    n = 16 if quick else 200
    test_seed = seed_of(seed, "upsampler test scenes")
    high = make_scenes(n, SCENE_SIZE, seed=test_seed, split="all").images

    def rows(pipe):
        return {
            f"start {start}, {k} steps": {
                "start_step": start,
                "num_steps": k,
                **timed_psnr(pipe, high, 2 if quick else k, seed, start),
            }
            for start, k in UPSAMPLER_SETTINGS
        }

    psnr_rows = rows(pipe)
    print(json.dumps(psnr_rows, indent=1))
    default = psnr_rows[f"start {UPSAMPLER_START}, {UPSAMPLER_DEFAULT_STEPS} steps"]
    parameterisation = {}
    twins = info.get("twins") or {}
    if EPS_TWIN in twins:  # the recipe's own run (not a first-recipe checkpoint)
        step = twins[EPS_TWIN]["steps"]
        for label, twin in (("v", None), ("eps", EPS_TWIN)):
            m, i = pretrained.load_pretrained(name, None, out_dir, step, twin)
            parameterisation[label] = {
                "prediction_type": i["prediction_type"],
                "steps": step,
                "psnr": rows(upsampler_pipe(m, i)),
                "x0_psnr_by_t": x0_psnr_by_t(m, i, high[:64], seed),
            }
        print(json.dumps(parameterisation, indent=1))
    metrics = {
        "psnr": psnr_rows,
        "images": n,
        "gain_db": default["upsampler"] - default["bicubic"],
        "x0_psnr_by_t": x0_psnr_by_t(model, info, high[:64], seed),
        "parameterisation": parameterisation,
    }
    write_manifest(
        pretrained.checkpoint_path(name, out_dir), {**info, "metrics": metrics}
    )
    return pretrained.manifest(name, out_dir)


UPSAMPLER = Recipe(
    name="scenes-upsampler",
    builds="the mini DALL-E 2's 32 -> 64 upsampler",
    chapter=9,
    train=train_scenes_upsampler,
    measure=measure_upsampler,
)

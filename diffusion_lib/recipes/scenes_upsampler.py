"""Chapter 9's upsampler: 32x32 -> 64x64, a pixel UNet that sees the noisy large
image beside the enlarged small one."""

from __future__ import annotations

import json
from dataclasses import replace

import torch

from .. import pretrained
from ..data import SCENE_SIZE, make_scenes
from ..pipelines import MiniDALLE2
from ..schedules import NoiseSchedule
from ..train import (
    UpsamplerTrainConfig,
    save_checkpoint,
    train_upsampler,
    write_manifest,
)
from ..unclip import UnCLIPUpsampler
from ..unet import UNetConfig
from .base import Recipe, seed_of
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
    steps=1500,
    batch_size=64,
    lr=1e-3,
    warmup=100,
    ema_decay=0.999,
    p_uncond=0.0,  # no guidance
    prediction_type="eps",
    loss_weighting="none",
    seed=0,
    crop=32,
    factor=2,
)
# a smoke run: through warm-up, every file written
SCENES_UPSAMPLER_QUICK = replace(
    SCENES_UPSAMPLER_TRAIN, steps=4, warmup=2, batch_size=8
)
# (first timestep, DDIM steps) measured. Started from pure noise (t = 999) the
# eps-predicting upsampler fails: at the noisiest steps x0 = (x_t - sqrt(1 - a) eps) /
# sqrt(a) magnifies its small errors in eps by up to 1 / sqrt(a) = 20,000 (chapter 8),
# and the garbage it clips to [-1, 1] survives as texture. Started from the enlarged
# low-resolution image noised to t = 700 (SDEdit), it skips those steps.
UPSAMPLER_SETTINGS = ((999, 10), (700, 5), (700, 10), (500, 10))
UPSAMPLER_DEFAULT_STEPS = 10
UPSAMPLER_START = 700


def train_scenes_upsampler(
    out_dir, *, quick=False, seed=0, device="cpu", accelerator=None
):
    """The 32 -> 64 upsampler, on random 32x32 crops of the unCLIP training scenes."""
    cfg = replace(
        SCENES_UPSAMPLER_QUICK if quick else SCENES_UPSAMPLER_TRAIN, seed=seed
    )
    scenes = unclip_training_scenes(quick, seed)
    schedule = NoiseSchedule.make(
        UNCLIP_SCHEDULE["kind"], UNCLIP_SCHEDULE["num_timesteps"]
    )
    torch.manual_seed(seed)
    model = UnCLIPUpsampler(SCENES_UPSAMPLER)
    result = train_upsampler(
        model, schedule, scenes.images, cfg, accelerator=accelerator
    )
    fields = unclip_fields(
        "scenes-upsampler",
        cfg,
        result,
        seed=seed,
        quick=quick,
        device="cpu",
        accelerator=accelerator,
    )
    info = {
        **fields,
        "config": SCENES_UPSAMPLER.to_dict(),
        "image_size": SCENE_SIZE,
        "sampling_steps": UPSAMPLER_DEFAULT_STEPS,
        "sampling_start": UPSAMPLER_START,
        "training_images": len(scenes),
    }
    path = pretrained.checkpoint_path("scenes-upsampler", out_dir)
    return save_checkpoint(path, result.ema.model, info, accelerator=accelerator)


def measure_upsampler(out_dir=None, *, quick=False, seed=0, device="cpu") -> dict:
    """PSNR of the upsampler against bicubic enlargement, at each of
    UPSAMPLER_SETTINGS."""
    model, info = pretrained.load_pretrained("scenes-upsampler", None, out_dir)
    schedule = pretrained.schedule_from_manifest(info)
    pipe = MiniDALLE2(
        upsampler=model,
        upsampler_schedule=schedule,
        upsampler_prediction=info["prediction_type"],
    )
    n = 16 if quick else 200
    test_seed = seed_of(seed, "upsampler test scenes")
    high = make_scenes(n, SCENE_SIZE, seed=test_seed, split="all").images
    rows = {
        f"start {start}, {k} steps": {
            "start_step": start,
            "num_steps": k,
            **upsampler_psnr(pipe, high, 2 if quick else k, seed, start),
        }
        for start, k in UPSAMPLER_SETTINGS
    }
    print(json.dumps(rows, indent=1))
    default = rows[f"start {UPSAMPLER_START}, {UPSAMPLER_DEFAULT_STEPS} steps"]
    metrics = {
        "psnr": rows,
        "images": n,
        "gain_db": default["upsampler"] - default["bicubic"],
    }
    info = {**info, "sampling_start": UPSAMPLER_START}
    write_manifest(
        pretrained.checkpoint_path("scenes-upsampler", out_dir),
        {**info, "metrics": metrics},
    )
    return pretrained.manifest("scenes-upsampler", out_dir)


UPSAMPLER = Recipe(
    name="scenes-upsampler",
    builds="the mini DALL-E 2's 32 -> 64 upsampler",
    chapter=9,
    train=train_scenes_upsampler,
    measure=measure_upsampler,
)

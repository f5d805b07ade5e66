"""Chapter 8's mini Stable Diffusion: a latent UNet trained on the shipped VAE's
latents and CLIP's text states, then measured as a whole pipeline."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import torch

from .. import pretrained
from ..clip import tokenizer_from_manifest
from ..data import SCENE_SIZE, make_scenes
from ..pipelines import MiniStableDiffusion, encode_scenes
from ..schedules import NoiseSchedule
from ..train import (
    TrainConfig,
    save_checkpoint,
    train_diffusion,
    write_manifest,
)
from ..unet import UNet, UNetConfig
from .base import (
    MeasureMemo,
    Recipe,
    decay_fields,
    run_fields,
    train_budgets,
    training_fields,
)
from .measure import (
    SCENE_MEASURE_PROMPTS,
    guidance_sweep,
    measure_binding,
    measure_budget_points,
    measure_scene_pipeline,
)

# The mini Stable Diffusion's denoiser (chapter 8): a cross-attention UNet on 8x8x4
# latents, attending to the CLIP text encoder's token states (width 64), with SD's
# attention blocks (spatial_transformer: proj_in, self- and cross-attention, GEGLU,
# proj_out), so that diffusers' UNet2DConditionModel loads it by renaming keys.
SCENES_LDM_UNET = UNetConfig(
    in_channels=4,
    out_channels=4,
    base_channels=64,
    channel_mults=(1, 2),
    num_res_blocks=1,
    attention_levels=(0, 1),
    context_dim=64,
    spatial_transformer=True,
)
# For chapter 6's cost comparison: the same UNet working on 64x64x3 pixels, with the
# three extra levels (64 -> 32 -> 16 -> 8) that the VAE's encoder and decoder replace.
PIXEL_COMPARISON_UNET = replace(
    SCENES_LDM_UNET,
    in_channels=3,
    out_channels=3,
    channel_mults=(1, 1, 1, 1, 2),
    attention_levels=(3, 4),
)
SCENES_LDM_TRAIN = TrainConfig(
    # 6000 steps: 6,750 s on 2 CPU threads in SD's layout (the run's manifest);
    # chapter 10's budgets are 750, 1500, 3000 and 6000 of them
    steps=6000,
    batch_size=128,
    lr=1e-3,
    warmup=200,
    # constant after warm-up: the EMA kept at 1/8, 1/4, 1/2 and all of the run is
    # then the model a run of that length gives, and each ends with a decay of 20% of
    # its steps (recipes.base.cool_down): chapter 10's training budgets, the last of
    # them the shipped model (6,000 + 1,200 steps)
    lr_schedule="constant",
    ema_decay=0.9995,
    p_uncond=0.1,
    prediction_type="eps",
    loss_weighting="none",
    seed=0,
)
SCENES_LDM_IMAGES = 20000
# a smoke run: through warm-up, every file written (8 steps: 4 distinct budgets)
SCENES_LDM_QUICK = replace(SCENES_LDM_TRAIN, steps=8, warmup=2, batch_size=16)
# Stable Diffusion's "scaled linear" betas (0.00085 -> 0.012): alpha_bar_T = 0.0047.
# Not Part I's cosine schedule: its alpha_bar_T = 2.4e-9, and a DDIM step from T with
# eps-prediction divides by sqrt(alpha_bar_T), which pixels survive only because x0 is
# clipped to [-1, 1]; latents are not clipped, and the samples diverge (chapter 8).
LDM_SCHEDULE = {"kind": "scaled_linear", "num_timesteps": 1000}
# Three in four training scenes have two objects: one object is learned long before
# the relation between two is (chapter 8), so the hard case gets most of the samples.
LDM_TWO_OBJECT_FRACTION = 0.75
LDM_GUIDANCE = 3.0  # the default guidance scale of the shipped pipeline
LDM_SWEEP = (1.0, 2.0, 3.0, 5.0, 8.0)  # guidance scales of the sweep


def train_ldm(out_dir, *, quick=False, seed=0, device="cpu", accelerator=None):
    """The latent UNet, on the VAE's latents of 20,000 training scenes and CLIP's
    token states of their captions (both frozen, encoded once)."""
    cfg = replace(SCENES_LDM_QUICK if quick else SCENES_LDM_TRAIN, seed=seed)
    n_images = 128 if quick else SCENES_LDM_IMAGES
    device = torch.device(device)
    vae, vae_info = pretrained.load_pretrained("scenes-vae", device, out_dir)
    text_encoder, clip_info = pretrained.load_pretrained("scenes-clip", device, out_dir)
    tokenizer = tokenizer_from_manifest(clip_info)
    scenes = make_scenes(
        n_images,
        SCENE_SIZE,
        seed=seed,
        split="train",
        two_object_fraction=LDM_TWO_OBJECT_FRACTION,
    )
    start = time.perf_counter()
    scenes.images = scenes.images.to(device)
    latents, context = encode_scenes(vae, text_encoder, tokenizer, scenes)
    encode_seconds = time.perf_counter() - start
    null = text_encoder.text_states(tokenizer([""]).to(device))[0].detach()
    schedule = NoiseSchedule.make(LDM_SCHEDULE["kind"], LDM_SCHEDULE["num_timesteps"])
    torch.manual_seed(seed)
    model = UNet(SCENES_LDM_UNET).to(device)
    static = {  # what loads and samples it, in its budget checkpoints too
        "config": SCENES_LDM_UNET.to_dict(),
        "schedule": LDM_SCHEDULE,
        "prediction_type": cfg.prediction_type,
        "guidance_scale": LDM_GUIDANCE,
        "image_size": SCENE_SIZE,
        "vae_sha256": vae_info["sha256"],
        "clip_sha256": clip_info["sha256"],
    }
    run = run_fields("scenes-ldm", cfg, seed, quick, static)

    def train(unet, config, **kw):
        return train_diffusion(
            unet,
            schedule,
            latents,
            None,
            config,
            context=context,
            null_context=null,
            accelerator=accelerator,
            **kw,
        )

    result, last, budgets, decays = train_budgets(
        "scenes-ldm",
        out_dir,
        cfg,
        run,
        model,
        train,
        device=device,
        accelerator=accelerator,
    )
    ema = last.ema.model
    info = {
        **training_fields(
            "scenes-ldm",
            cfg,
            ema,
            result,
            seed=seed,
            quick=quick,
            device=device,
            accelerator=accelerator,
        ),
        **decay_fields(cfg, result, last),
        **static,
        "latent_shape": list(latents.shape[1:]),
        "training_images": n_images,
        "two_object_fraction": LDM_TWO_OBJECT_FRACTION,
        "encode_seconds": round(encode_seconds, 1),
        "budget_steps": list(budgets),
        "budget_cooldown_steps": decays,
        "metrics": None,
    }
    return save_checkpoint(
        pretrained.checkpoint_path("scenes-ldm", out_dir),
        ema,
        info,
        accelerator=accelerator,
    )


def measure_ldm_budgets(out_dir, metrics, *, quick, seed, device, memo=None) -> dict:
    """Chapter 10's points for the mini SD: the UNet its run kept at each budget step,
    in the shipped pipeline, on the prompts, seeds and n the pipeline is measured on
    (the whole run's groups are the pipeline's own, measured above), each with its
    binding broken down by what went wrong. {step: {"groups", "binding"}}. memo: a
    MeasureMemo that keeps each budget's figures as they are measured."""
    memo = memo or MeasureMemo.none
    info = pretrained.manifest("scenes-ldm", out_dir)
    budgets = info.get("budget_steps") or []
    n, steps = (8, 2) if quick else (SCENE_MEASURE_PROMPTS, 50)
    out = {}
    for step in budgets:

        def build(s=step):
            return MiniStableDiffusion.from_pretrained(device, out_dir, step=s)

        label = f"step {step}"
        if step == info["train"]["steps"]:  # the whole run: the pipeline measured

            def binding(b=build):
                return measure_binding({"run": b()}, n, seed, steps)["run"]

            out[str(step)] = {
                "groups": metrics["groups"],
                "binding": memo(f"budget {label}: binding", binding),
            }
        else:

            def point(b=build, label=label):
                return measure_budget_points({label: b}, n, seed, steps, n)[label]

            out[str(step)] = memo(f"budget {label}", point)
    return out


def measure_ldm(out_dir=None, *, quick=False, seed=0, device="cpu") -> dict:
    """Measure the saved mini SD and write the figures into its manifest."""
    pipe = MiniStableDiffusion.from_pretrained(device, out_dir)
    n, n_sweep, steps = (8, 8, 2) if quick else (SCENE_MEASURE_PROMPTS, 200, 50)
    sweep_steps = 2 if quick else 25
    memo = MeasureMemo(
        "scenes-ldm", out_dir, ("scenes-vae", "scenes-clip", "scenes-ldm"), quick
    )
    metrics = {
        "judge": "open-set scene judge (diffusion_lib.judge.SceneJudge)",
        "features": "scene appearance features (diffusion_lib.metrics.scene_features)",
        "sampler": {
            "sampler": "ddim",
            "num_steps": steps,
            "guidance_scale": pipe.guidance_scale,
        },
        "groups": memo("groups", lambda: measure_scene_pipeline(pipe, n, seed, steps)),
        "guidance_sweep": memo(
            "guidance_sweep",
            lambda: guidance_sweep(pipe, n_sweep, seed, sweep_steps, scales=LDM_SWEEP),
        ),
        "guidance_sweep_steps": sweep_steps,
    }
    metrics["budgets"] = measure_ldm_budgets(
        out_dir, metrics, quick=quick, seed=seed, device=device, memo=memo
    )
    print(json.dumps(metrics, indent=1))
    info = pretrained.manifest("scenes-ldm", out_dir)
    write_manifest(
        pretrained.checkpoint_path("scenes-ldm", out_dir), {**info, "metrics": metrics}
    )
    memo.finish()
    return pretrained.manifest("scenes-ldm", out_dir)


LDM = Recipe(
    name="scenes-ldm",
    builds="the mini Stable Diffusion's latent UNet (then the whole pipeline measured)",
    chapter=8,
    train=train_ldm,
    measure=measure_ldm,
    devices=("cpu", "cuda"),
    needs=("scenes-vae", "scenes-clip"),
)

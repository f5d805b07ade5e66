"""Chapter 12's inpainting UNet: the mini SD's UNet fine-tuned to take the masked
image and the mask (9 input channels), measured beside training-free RePaint and
image-to-image."""

from __future__ import annotations

import time
from dataclasses import asdict, replace

import torch

from .. import pretrained
from ..adapters import count_trainable
from ..data import SCENE_SIZE, make_scenes
from ..editing import (
    InpaintingUNet,
    inpaint,
    inpaint_condition,
    psnr_where,
    repaint,
    seam_band,
    training_masks,
)
from ..finetune import edit_task, measure_edits, measure_img2img
from ..loaders import load_inpainting
from ..pipelines import encode_scenes
from ..setup import hardware
from ..train import (
    TrainConfig,
    loss_summary,
    save_checkpoint,
    train_diffusion,
    write_manifest,
)
from .base import Recipe, seed_of, where
from .part4 import base_pipe, quick_patch

INPAINT_TRAIN = TrainConfig(
    steps=3000, batch_size=64, lr=2e-4, warmup=100, ema_decay=0.999, p_uncond=0.1
)
EDIT_IMAGES = 20000  # the mini SD's training scenes, each with one mask
# the condition's channels in Stable Diffusion's order, [x_t, mask, masked latent], the
# mask sampled at the latent grid and the masked latent drawn from the VAE's
# posterior (editing.inpaint_condition), so diffusers' StableDiffusionInpaintPipeline
# runs the exported UNet
INPAINT_SD_ORDER = True
REPAINT_RESAMPLE = 5


def inpaint_sizes(quick: bool):
    """(training images, measured scenes, DDIM steps)."""
    return (64, 4, 2) if quick else (EDIT_IMAGES, 100, 50)


def inpaint_metrics(pipe, model, n, steps, seed, quick) -> dict:
    """The three inpainting methods on one editing task, the VAE's own PSNR outside
    the mask (the ceiling), and image-to-image's strength sweep."""
    task = edit_task(n, seed_of(seed, "edit scenes"))
    scenes, which, edited, mask, captions = task
    fakes = {
        "mask-conditioned UNet": inpaint(
            pipe, model, scenes.images, mask, captions, num_steps=steps, seed=seed
        ),
        f"RePaint (U = {REPAINT_RESAMPLE})": repaint(
            pipe,
            scenes.images,
            mask,
            captions,
            num_steps=steps,
            resample=1 if quick else REPAINT_RESAMPLE,
            seed=seed,
        ),
        "RePaint without resampling (U = 1)": repaint(
            pipe, scenes.images, mask, captions, num_steps=steps, resample=1, seed=seed
        ),
    }
    recon = pipe.decode(pipe.vae.encode_scaled(scenes.images))
    far = (mask < 0.5) & ~seam_band(mask)
    return {
        "prompts": n,
        "num_steps": steps,
        "inpainting": {k: measure_edits(v, *task[:4]) for k, v in fakes.items()},
        "vae_psnr_outside": psnr_where(recon, scenes.images, far).mean().item(),
        "img2img_sweep": measure_img2img(
            pipe, n, seed_of(seed, "img2img scenes"), steps
        ),
    }


def train_scenes_inpaint(
    out_dir, *, quick=False, seed=0, device="cpu", accelerator=None
):
    """Fine-tune the mini SD's UNet into a mask-conditioned inpainting UNet on the mini
    SD's scenes with object / rectangle / full masks, then measure it."""
    n_images, n, steps = inpaint_sizes(quick)
    cfg = replace(INPAINT_TRAIN, **quick_patch(quick), seed=seed)
    pipe = base_pipe(out_dir, accelerator)
    scenes = make_scenes(n_images, SCENE_SIZE, seed=seed, split="train")
    masks = training_masks(scenes, seed)
    start = time.perf_counter()
    latents, context = encode_scenes(
        pipe.vae, pipe.text_encoder, pipe.tokenizer, scenes
    )
    parts = [slice(i, i + 500) for i in range(0, n_images, 500)]
    gen = torch.Generator().manual_seed(seed_of(seed, "inpaint latents"))
    cond = torch.cat(
        [
            inpaint_condition(
                pipe,
                scenes.images[p],
                masks[p],
                sd_order=INPAINT_SD_ORDER,
                generator=gen,
            )
            for p in parts
        ]
    )
    encode_seconds = time.perf_counter() - start
    model = InpaintingUNet.from_text_to_image(pipe.unet, sd_order=INPAINT_SD_ORDER)
    null = pipe.encode_prompts([""])[0]
    result = train_diffusion(
        model,
        pipe.schedule,
        latents,
        None,
        cfg,
        context=context,
        null_context=null,
        conditions={"cond": (cond, None)},
        progress=False,
        accelerator=accelerator,
    )
    model = result.ema.model.eval()
    info = {
        "recipe": "scenes-inpaint",
        "config": model.unet.config.to_dict(),
        "train": asdict(cfg),
        "seed": seed,
        "quick": quick,
        "schedule": pretrained.manifest("scenes-ldm", out_dir)["schedule"],
        "prediction_type": pipe.prediction_type,
        "guidance_scale": pipe.guidance_scale,
        "training_images": n_images,
        "masks": "1/2 a box around one object, 1/4 a random rectangle, 1/4 all",
        "channel_order": "sd" if INPAINT_SD_ORDER else "course",
        "encode_seconds": round(encode_seconds, 1),
        "training_seconds": round(result.seconds, 1),
        "hardware": hardware(where(device, accelerator)),
        "ldm_sha256": pretrained.manifest("scenes-ldm", out_dir)["sha256"],
        "parameters": count_trainable(model)[1],
        **loss_summary(result.losses),
        "metrics": inpaint_metrics(pipe, model, n, steps, seed, quick),
    }
    path = pretrained.checkpoint_path("scenes-inpaint", out_dir)
    return save_checkpoint(path, model.unet, info, accelerator=accelerator)


def measure_inpaint(out_dir=None, *, quick=False, seed=0, device="cpu") -> dict:
    """Re-measure the saved scenes-inpaint (the inpainting methods and image-to-image)
    and rewrite its manifest's metrics."""
    pipe = base_pipe(out_dir)
    model, info = load_inpainting(out_dir, device)
    _, n, steps = inpaint_sizes(quick)
    info["metrics"] = inpaint_metrics(pipe, model, n, steps, seed, quick)
    write_manifest(pretrained.checkpoint_path("scenes-inpaint", out_dir), info)
    return info


INPAINT = Recipe(
    name="scenes-inpaint",
    builds="the mini SD's inpainting UNet (and RePaint, image-to-image measured)",
    chapter=12,
    train=train_scenes_inpaint,
    measure=measure_inpaint,
    measure_after_train=False,  # it measures in the same run
    needs=("scenes-ldm", "scenes-vae", "scenes-clip"),
)

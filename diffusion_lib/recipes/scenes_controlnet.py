"""Chapter 13's ControlNet: a trainable copy of the frozen mini SD's encoder that
steers it with a layout mask, joined through zero convolutions."""

from __future__ import annotations

from dataclasses import asdict, replace

import torch

from .. import pretrained
from ..adapters import count_trainable
from ..controlnet import controlnet_parameters, layout_masks, mask_iou
from ..data import BACKGROUND, SCENE_SIZE, make_scenes
from ..finetune import measure_control
from ..loaders import load_controlnet
from ..pipelines import encode_scenes
from ..setup import hardware
from ..train import (
    CONTROL_TRAIN,
    loss_summary,
    save_checkpoint,
    train_controlnet,
    write_manifest,
)
from .base import Recipe, seed_of, where
from .part4 import base_pipe, quick_patch

CONTROL_IMAGES = 20000
# the hint encoder as the released code (and diffusers' ControlNetModel) has it, 64 ->
# 8 in three stride-2 steps (SD's widths are 16, 32, 96, 256 for 512 -> 64)
CONTROL_HINT_WIDTHS = (16, 32, 64, 128)
CONTROL_WATCH = 250  # measure the IoU of a fixed batch every this many steps
WATCH_STEPS = 20  # DDIM steps of the watched batch


def control_sizes(quick: bool):
    """(training images, measured scenes, DDIM steps)."""
    return (64, 4, 2) if quick else (CONTROL_IMAGES, 100, 50)


def control_metrics(pipe, n, seed, steps) -> dict:
    return {
        "prompts": n,
        "num_steps": steps,
        "control": measure_control(pipe, n, seed_of(seed, "control scenes"), steps),
    }


def train_scenes_controlnet(
    out_dir, *, quick=False, seed=0, device="cpu", accelerator=None
):
    """Train a ControlNet (layout masks) for the frozen mini SD; watch the IoU during
    training (the paper's "sudden convergence"); measure with and without control."""
    n_images, n, steps = control_sizes(quick)
    cfg = replace(CONTROL_TRAIN, **quick_patch(quick, steps=4), seed=seed)
    pipe = base_pipe(out_dir, accelerator)
    scenes = make_scenes(n_images, SCENE_SIZE, seed=seed, split="train")
    latents, context = encode_scenes(
        pipe.vae, pipe.text_encoder, pipe.tokenizer, scenes
    )
    control = layout_masks(scenes)
    null = pipe.encode_prompts([""])[0]
    watch_seed = seed_of(seed, "control watch scenes")
    watch = make_scenes(8 if quick else 32, seed=watch_seed, split="train")
    watch_control = layout_masks(watch)
    watch_steps = steps if quick else WATCH_STEPS

    def callback(step, net):
        pipe.controlnet = net
        fake = pipe(
            watch.captions, num_steps=watch_steps, seed=seed, control=watch_control
        )
        iou = mask_iou(fake, watch_control, BACKGROUND).mean().item()
        print(f"step {step}: IoU {iou:.3f}", flush=True)
        return iou  # kept in result.records (a resumed run keeps them too)

    # the hint encoder's initial weights come from torch's global generator: seed it
    # (seed stream "training data", as every recipe seeds its weights), so the
    # ControlNet does not depend on what ran before it in the process
    torch.manual_seed(seed_of(seed, "training data"))
    net, result = train_controlnet(
        pipe.unet,
        pipe.schedule,
        latents,
        context,
        null,
        control,
        cfg,
        pipe.prediction_type,
        callback,
        2 if quick else CONTROL_WATCH,
        hint_widths=CONTROL_HINT_WIDTHS,
        accelerator=accelerator,
    )
    pipe.controlnet = net
    curve = [{"step": step, "mask_iou": value} for step, value in result.records]
    info = {
        "recipe": "scenes-controlnet",
        "kind": "controlnet",
        "control": "layout mask [1, 64, 64]: how much of each pixel the shapes cover",
        "hint_widths": list(CONTROL_HINT_WIDTHS),
        "train": asdict(cfg),
        "seed": seed,
        "quick": quick,
        "training_images": n_images,
        "training_seconds": round(result.seconds, 1),
        "hardware": hardware(where(device, accelerator)),
        "ldm_sha256": pretrained.manifest("scenes-ldm", out_dir)["sha256"],
        "parameters": controlnet_parameters(net),
        "unet_parameters": count_trainable(pipe.unet)[1],
        **loss_summary(result.losses),
        "iou_curve": curve,
        "iou_curve_steps": watch_steps,
        "metrics": control_metrics(pipe, n, seed, steps),
    }
    path = pretrained.checkpoint_path("scenes-controlnet", out_dir)
    return save_checkpoint(path, net, info, accelerator=accelerator)


def measure_controlnet(out_dir=None, *, quick=False, seed=0, device="cpu") -> dict:
    """Re-measure the saved scenes-controlnet and rewrite its manifest's metrics."""
    pipe = base_pipe(out_dir)
    info = load_controlnet(pipe, directory=out_dir)
    _, n, steps = control_sizes(quick)
    info["metrics"] = control_metrics(pipe, n, seed, steps)
    write_manifest(pretrained.checkpoint_path("scenes-controlnet", out_dir), info)
    return info


CONTROLNET = Recipe(
    name="scenes-controlnet",
    builds="a ControlNet (layout masks) for the mini SD",
    chapter=13,
    train=train_scenes_controlnet,
    measure=measure_controlnet,
    measure_after_train=False,  # it measures in the same run
    needs=("scenes-ldm", "scenes-vae", "scenes-clip"),
)

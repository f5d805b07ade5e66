"""What the mini DALL-E 2's three recipes share (chapter 9): their training scenes
(the mini SD's: same number, same two-object share), the frozen CLIP embeddings they
train on, and their noise schedule."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import SCENE_SIZE, make_scenes, scene_captions
from .base import training_fields
from .scenes_ldm import LDM_TWO_OBJECT_FRACTION

UNCLIP_BASE_SIZE = 32  # the decoder's resolution; the upsampler doubles it to 64
UNCLIP_SCHEDULE = {"kind": "cosine", "num_timesteps": 1000}
UNCLIP_TRAINING_IMAGES = 20000  # the mini SD's data: same size, same two-object share
QUICK_TRAINING_IMAGES = 128


def unclip_fields(name, cfg, result, *, seed, quick, device, accelerator) -> dict:
    """The manifest fields the three unCLIP checkpoints share: training_fields, the
    schedule and prediction type they sample with, and no metrics yet."""
    fields = training_fields(
        name,
        cfg,
        result.ema.model,
        result,
        seed=seed,
        quick=quick,
        device=device,
        accelerator=accelerator,
    )
    return {
        **fields,
        "schedule": UNCLIP_SCHEDULE,
        "prediction_type": cfg.prediction_type,
        "metrics": None,
    }


@torch.no_grad()
def clip_embeddings(clip_model, tokenizer, scenes, batch_size=500) -> dict:
    """What the unCLIP models train on, computed once (CLIP is frozen): unit image
    embeddings [N, D], unit text embeddings [N, D], token states [N, L, W] and the
    caption mask [N, L] (True at real tokens)."""
    out = {"image_embed": [], "text_embed": [], "text_states": [], "text_mask": []}
    device = next(clip_model.parameters()).device
    for i in range(0, len(scenes), batch_size):
        part = slice(i, i + batch_size)
        tokens = tokenizer(scenes.captions[part]).to(device)
        states, embed = clip_model.text(tokens)
        out["image_embed"].append(
            clip_model.encode_image(scenes.images[part].to(device))
        )
        out["text_embed"].append(F.normalize(embed, dim=-1))
        out["text_states"].append(states)
        out["text_mask"].append(tokens != tokenizer.pad_id)
    return {k: torch.cat(v).cpu() for k, v in out.items()}


def empty_caption_embeddings(clip_model, tokenizer) -> dict:
    """The empty caption's text_states [L, W], text_embed [D] and text_mask [L]: what
    caption dropout puts in place of a caption (the prior's "null" condition)."""
    blank = make_scenes(1, SCENE_SIZE, seed=0)
    blank.captions = [""]
    e = clip_embeddings(clip_model, tokenizer, blank)
    return {k: e[k][0] for k in ("text_states", "text_embed", "text_mask")}


def unclip_training_scenes(quick: bool, seed: int):
    n = QUICK_TRAINING_IMAGES if quick else UNCLIP_TRAINING_IMAGES
    return make_scenes(
        n,
        SCENE_SIZE,
        seed=seed,
        split="train",
        two_object_fraction=LDM_TWO_OBJECT_FRACTION,
    )


def unclip_training_captions(seed: int = 0) -> set:
    """Every caption the shipped prior and decoder were trained on (their recipes'
    scenes, without rendering them)."""
    return set(
        scene_captions(UNCLIP_TRAINING_IMAGES, seed, "train", LDM_TWO_OBJECT_FRACTION)
    )

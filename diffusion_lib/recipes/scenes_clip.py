"""Chapter 7's CLIP: an image encoder and a text encoder trained contrastively on the
scenes and their captions."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import torch

from .. import pretrained
from ..clip import (
    CLIP,
    CLIPConfig,
    WordTokenizer,
    binding_test,
    retrieval,
    scene_tokenizer,
    zero_shot_one_object,
)
from ..data import SCENE_SIZE, make_scenes
from ..setup import hardware
from ..train import save_checkpoint
from ..train_parts import CLIPTrainConfig, train_clip
from ..unet import count_parameters
from .base import Recipe, seed_of, where

SCENES_CLIP_TRAIN = CLIPTrainConfig(
    steps=3000, batch_size=256, lr=1e-3, warmup=100, weight_decay=0.1, seed=0
)
SCENES_CLIP_IMAGES = 20000
# a smoke run; a batch of 32 still gives every caption 31 negatives
SCENES_CLIP_QUICK = replace(SCENES_CLIP_TRAIN, steps=4, warmup=2, batch_size=32)


def scenes_clip_config(tokenizer: WordTokenizer) -> CLIPConfig:
    return CLIPConfig(
        vocab_size=tokenizer.vocab_size, context_length=tokenizer.context_length
    )


def measure_clip(model, tokenizer, n: int, seed: int) -> dict:
    """Zero-shot classification (one-object scenes), retrieval recall@1 (a pool of n
    scenes) and the binding test (two-object scenes), per split."""
    out = {}
    for split in ("train", "holdout"):

        def scenes(stream, two, split=split):
            return make_scenes(
                n, SCENE_SIZE, seed_of(seed, stream), split, two_object_fraction=two
            )

        out[split] = {
            "zero_shot": zero_shot_one_object(
                model, tokenizer, scenes("zero-shot scenes", 0.0)
            ),
            "retrieval": retrieval(model, tokenizer, scenes("retrieval scenes", 0.5)),
            "binding": binding_test(model, tokenizer, scenes("binding scenes", 1.0)),
        }
    return out


def train_scenes_clip(out_dir, *, quick=False, seed=0, device="cpu", accelerator=None):
    """Train CLIP contrastively on training-split scenes and their captions."""
    cfg = replace(SCENES_CLIP_QUICK if quick else SCENES_CLIP_TRAIN, seed=seed)
    n_images = 256 if quick else SCENES_CLIP_IMAGES
    tokenizer = scene_tokenizer()
    data = make_scenes(n_images, SCENE_SIZE, seed=seed, split="train")
    torch.manual_seed(seed)
    model = CLIP(scenes_clip_config(tokenizer))
    tokens = tokenizer(data.captions)
    result = train_clip(model, data.images, tokens, cfg, accelerator=accelerator)
    every = max(1, cfg.steps // 30)
    n = 64 if quick else 1000
    info = {
        "recipe": "scenes-clip",
        "config": model.config.to_dict(),
        "tokenizer": tokenizer.to_dict(),
        "train": asdict(cfg),
        "seed": seed,
        "quick": quick,
        "image_size": SCENE_SIZE,
        "training_images": n_images,
        "training_seconds": round(result.seconds, 1),
        "hardware": hardware(where(device, accelerator)),
        "parameters": count_parameters(model),
        "final_temperature": result.temperatures[-1],
        "curve": [
            {
                "step": i + every,
                "loss": sum(result.losses[i : i + every]) / every,
                "temperature": result.temperatures[i + every - 1],
            }
            for i in range(0, cfg.steps - every + 1, every)
        ],
        "metrics": {"eval_images": n, **measure_clip(model, tokenizer, n, seed)},
    }
    print(json.dumps(info["metrics"], indent=1))
    path = pretrained.checkpoint_path("scenes-clip", out_dir)
    return save_checkpoint(path, model, info, accelerator=accelerator)


CLIP_RECIPE = Recipe(
    name="scenes-clip",
    builds="CLIP on scenes (image and text encoders)",
    chapter=7,
    train=train_scenes_clip,
)

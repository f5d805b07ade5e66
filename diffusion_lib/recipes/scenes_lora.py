"""Chapter 11's LoRA: the mini SD taught the word "diamond" by a low-rank adapter on
its UNet's attention projections (and the word's frozen embedding row)."""

from __future__ import annotations

from dataclasses import asdict, replace

from .. import pretrained
from ..adapters import LORA_TARGETS, count_trainable, lora_state_dict, set_lora_scale
from ..data import SCENE_SIZE, concept_scenes, make_scenes
from ..finetune import (
    CONCEPT_IMAGES,
    CONCEPT_SHARE,
    LORA_ALPHA,
    LORA_RANK,
    LORA_TRAIN,
    OLD_GROUPS,
    PRESERVATION_IMAGES,
    caption_counts,
    measure_concept,
    train_lora,
    training_captions,
    vae_reconstruction,
)
from ..loaders import CONCEPT, init_words, load_lora_weights, teach_word
from ..setup import hardware
from ..train import loss_summary, save_checkpoint, write_manifest
from .base import Recipe, seed_of, where
from .part4 import base_pipe, quick_patch

STRENGTHS = (0.0, 0.5, 1.0, 1.5)  # adapter strengths of the sweep


def concept_settings(quick: bool):
    """(concept images, preservation images, prompts per group, DDIM steps)."""
    if quick:
        return 8, 32, 6, 2
    return CONCEPT_IMAGES, PRESERVATION_IMAGES, 100, 50


def concept_summary(row: dict) -> dict:
    """measure_concept's row as one number per group (the joint accuracy)."""
    return {
        "concept": row["concept"]["joint"],
        **{k: row[k]["joint"] for k in OLD_GROUPS},
    }


def lora_metrics(pipe, before: dict, n, seed, steps, exclude) -> dict:
    """The LoRA manifest's metrics: `before` (measure_concept without the adapter),
    then pipe (with it) measured at strength 1 and along STRENGTHS."""
    after, sweep = measure_concept(pipe, n, seed, steps, exclude), {}
    for s in STRENGTHS:  # strength 1 is `after`: the same prompts and seeds
        set_lora_scale(pipe.unet, s)
        row = after if s == 1.0 else measure_concept(pipe, n, seed, steps, exclude)
        sweep[f"{s:g}"] = concept_summary(row)
    set_lora_scale(pipe.unet, 1.0)
    return {
        "prompts": n,
        "num_steps": steps,
        "training_captions_measured": caption_counts(n, seed, exclude),
        "vae_reconstruction": vae_reconstruction(
            pipe, n, seed_of(seed, "vae probe scenes")
        ),
        "before (new word, no adapter)": before,
        "after": after,
        "strength_sweep": sweep,
    }


def train_scenes_lora(out_dir, *, quick=False, seed=0, device="cpu", accelerator=None):
    """Teach the mini SD the word "diamond" with LoRA; measure before, after and at
    several adapter strengths; ship the adapter (and the word's frozen row)."""
    n_concept, n_regular, n, steps = concept_settings(quick)
    exclude = training_captions(n_concept, n_regular, seed, out_dir)
    cfg = replace(LORA_TRAIN, **quick_patch(quick), seed=seed)
    pipe = base_pipe(out_dir, accelerator)
    teach_word(pipe)  # old prompts read exactly as before (tested)
    before = measure_concept(pipe, n, seed, steps, exclude)
    concept_seed = seed_of(seed, "concept pictures")
    concept = concept_scenes(n_concept, concept_seed, CONCEPT, SCENE_SIZE)
    regular_seed = seed_of(seed, "preservation scenes")
    regular = make_scenes(n_regular, SCENE_SIZE, seed=regular_seed, split="train")
    init_seed = seed_of(seed, "adapter init")
    result = train_lora(
        pipe, concept, regular, cfg, accelerator=accelerator, init_seed=init_seed
    )
    trainable, total = count_trainable(pipe.unet)
    word_row = pipe.text_encoder.text.token_embedding.new.detach()  # [1, W]
    state = {**lora_state_dict(pipe.unet), f"word.{CONCEPT}": word_row}
    info = {
        "recipe": "scenes-lora",
        "kind": "lora",
        "word": CONCEPT,
        "init_words": list(init_words(CONCEPT)),
        "rank": LORA_RANK,
        "alpha": LORA_ALPHA,
        "targets": list(LORA_TARGETS),
        "train": asdict(cfg),
        "seed": seed,
        "quick": quick,
        "concept_images": n_concept,
        "preservation_images": n_regular,
        "concept_share": CONCEPT_SHARE,
        "trainable_parameters": trainable,
        "unet_parameters": total - trainable,
        "training_seconds": round(result.seconds, 1),
        "hardware": hardware(where(device, accelerator)),
        "ldm_sha256": pretrained.manifest("scenes-ldm", out_dir)["sha256"],
        **loss_summary(result.losses),
        "metrics": lora_metrics(pipe, before, n, seed, steps, exclude),
    }
    path = pretrained.checkpoint_path("scenes-lora", out_dir)
    return save_checkpoint(path, state, info, accelerator=accelerator)


def measure_lora(out_dir=None, *, quick=False, seed=0, device="cpu") -> dict:
    """Re-measure the saved scenes-lora (before: the word's starting row without the
    adapter, as the recipe measured it) and rewrite its manifest's metrics."""
    n_concept, n_regular, n, steps = concept_settings(quick)
    exclude = training_captions(n_concept, n_regular, seed, out_dir)
    base = base_pipe(out_dir)
    teach_word(base)
    before = measure_concept(base, n, seed, steps, exclude)
    pipe = base_pipe(out_dir)
    info = load_lora_weights(pipe, directory=out_dir)
    info["metrics"] = lora_metrics(pipe, before, n, seed, steps, exclude)
    write_manifest(pretrained.checkpoint_path("scenes-lora", out_dir), info)
    return info


LORA = Recipe(
    name="scenes-lora",
    builds='a LoRA adapter that teaches the mini SD "diamond"',
    chapter=11,
    train=train_scenes_lora,
    measure=measure_lora,
    measure_after_train=False,  # it measures before and after training, in one run
    needs=("scenes-ldm", "scenes-vae", "scenes-clip"),
)

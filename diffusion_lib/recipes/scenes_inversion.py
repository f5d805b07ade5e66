"""Chapter 11's textual inversion: the mini SD taught the word "diamond" by one new
embedding row of its text encoder, everything else frozen."""

from __future__ import annotations

from dataclasses import asdict, replace

from .. import pretrained
from ..adapters import count_trainable
from ..data import SCENE_SIZE, concept_scenes
from ..finetune import (
    INVERSION_TRAIN,
    caption_counts,
    measure_concept,
    train_textual_inversion,
    training_captions,
)
from ..loaders import CONCEPT, init_words, load_textual_inversion, teach_word
from ..setup import hardware
from ..train import loss_summary, save_checkpoint, write_manifest
from .base import Recipe, seed_of, where
from .part4 import base_pipe, quick_patch
from .scenes_lora import concept_settings


def inversion_metrics(base, pipe, n, seed, steps, exclude) -> dict:
    """The textual-inversion manifest's metrics: base (the word's starting row) and
    pipe (the learned row) by measure_concept."""
    return {
        "prompts": n,
        "num_steps": steps,
        "training_captions_measured": caption_counts(n, seed, exclude),
        "before": measure_concept(base, n, seed, steps, exclude),
        "after": measure_concept(pipe, n, seed, steps, exclude),
    }


def train_scenes_inversion(
    out_dir, *, quick=False, seed=0, device="cpu", accelerator=None
):
    """Teach the mini SD the word "diamond" by textual inversion (one embedding row);
    measure before and after; ship the row."""
    n_concept, _, n, steps = concept_settings(quick)
    exclude = training_captions(n_concept, 0, seed, out_dir)
    cfg = replace(INVERSION_TRAIN, **quick_patch(quick), seed=seed)
    base = base_pipe(out_dir, accelerator)
    teach_word(base)
    pipe = base_pipe(out_dir, accelerator)
    table = teach_word(pipe)
    concept_seed = seed_of(seed, "concept pictures")
    concept = concept_scenes(n_concept, concept_seed, CONCEPT, SCENE_SIZE)
    result = train_textual_inversion(pipe, concept, cfg, accelerator=accelerator)
    info = {
        "recipe": "scenes-inversion",
        "kind": "textual inversion",
        "word": CONCEPT,
        "init_words": list(init_words(CONCEPT)),
        "train": asdict(cfg),
        "seed": seed,
        "quick": quick,
        "concept_images": n_concept,
        "trainable_parameters": table.new.numel(),
        "text_encoder_parameters": count_trainable(pipe.text_encoder)[1],
        "training_seconds": round(result.seconds, 1),
        "hardware": hardware(where(device, accelerator)),
        "ldm_sha256": pretrained.manifest("scenes-ldm", out_dir)["sha256"],
        "clip_sha256": pretrained.manifest("scenes-clip", out_dir)["sha256"],
        **loss_summary(result.losses),
        "metrics": inversion_metrics(base, pipe, n, seed, steps, exclude),
    }
    # the diffusers convention for a learned embedding: {word: row [W]}
    state = {CONCEPT: table.new.detach()[0]}
    path = pretrained.checkpoint_path("scenes-inversion", out_dir)
    return save_checkpoint(path, state, info, accelerator=accelerator)


def measure_inversion(out_dir=None, *, quick=False, seed=0, device="cpu") -> dict:
    """Re-measure the saved scenes-inversion and rewrite its manifest's metrics."""
    n_concept, _, n, steps = concept_settings(quick)
    exclude = training_captions(n_concept, 0, seed, out_dir)
    base = base_pipe(out_dir)
    teach_word(base)
    pipe = base_pipe(out_dir)
    info = load_textual_inversion(pipe, directory=out_dir)
    info["metrics"] = inversion_metrics(base, pipe, n, seed, steps, exclude)
    write_manifest(pretrained.checkpoint_path("scenes-inversion", out_dir), info)
    return info


INVERSION = Recipe(
    name="scenes-inversion",
    builds='a textual-inversion word ("diamond") for the mini SD',
    chapter=11,
    train=train_scenes_inversion,
    measure=measure_inversion,
    measure_after_train=False,  # it measures before and after training, in one run
    needs=("scenes-ldm", "scenes-vae", "scenes-clip"),
)

"""Chapter 9's unCLIP prior: caption -> CLIP image embedding, a transformer that
denoises the embedding given the caption's CLIP text states."""

from __future__ import annotations

from dataclasses import replace

import torch

from .. import pretrained
from ..clip import tokenizer_from_manifest
from ..data import SCENE_SIZE, captions_sha256, render_scenes
from ..pipelines import MiniDALLE2
from ..prior import DiffusionPrior, PriorConfig
from ..schedules import NoiseSchedule
from ..train import TrainConfig, save_checkpoint, train_diffusion, write_manifest
from .base import (
    MeasureMemo,
    Recipe,
    decay_fields,
    run_fields,
    seed_of,
    train_budgets,
)
from .dalle2 import (
    UNCLIP_SCHEDULE,
    clip_embeddings,
    empty_caption_embeddings,
    unclip_fields,
    unclip_training_captions,
    unclip_training_scenes,
)
from .measure import cosine, measure_prior_on, prior_spread, unseen_scenes
from .scenes_ldm import LDM_TWO_OBJECT_FRACTION

SCENES_PRIOR = PriorConfig(
    embed_dim=64, text_width=64, context_length=20, width=128, layers=4, heads=4
)
SCENES_PRIOR_TRAIN = TrainConfig(
    # the prior's share of the mini DALL-E 2's budget, the mini SD's UNet's training
    # FLOPs (chapter 10): prior 8.7%, decoder 64.6%, upsampler 26.8%, as the first
    # recipes split it
    steps=2664,
    batch_size=128,
    lr=5e-4,
    warmup=200,
    lr_schedule="constant",  # its checkpoints along the run are chapter 10's budgets
    weight_decay=0.0,
    ema_decay=0.999,
    p_uncond=0.1,  # the caption is dropped 10% of the time (guidance)
    prediction_type="x0",  # the paper's prior predicts the clean embedding
    loss_weighting="none",
    seed=0,
)
# a smoke run: through warm-up, every file written
SCENES_PRIOR_QUICK = replace(SCENES_PRIOR_TRAIN, steps=8, warmup=2, batch_size=16)
PRIOR_GUIDANCE = 2.0
PRIOR_SWEEP = (1.0, 2.0, 4.0)
# name -> (split, two_object_fraction) of captions never trained on
PRIOR_GROUPS = {
    "unseen captions, seen compositions": ("train", LDM_TWO_OBJECT_FRACTION),
    "held-out compositions": ("holdout", LDM_TWO_OBJECT_FRACTION),
}
# the gate against a collapsed prior (prior_spread: 0 when every draw of a caption is
# the same embedding, about 1 when draws differ as much as two real drawings do): a
# prior below a tenth of the real variety has collapsed onto one embedding per caption
PRIOR_SPREAD_GATE = 0.1


def train_prior(out_dir, *, quick=False, seed=0, device="cpu", accelerator=None):
    """The prior, on the standardised CLIP image embeddings of the unCLIP training
    scenes, conditioned on their captions' text states, embedding and mask."""
    cfg = replace(SCENES_PRIOR_QUICK if quick else SCENES_PRIOR_TRAIN, seed=seed)
    clip_model, clip_info = pretrained.load_pretrained("scenes-clip", None, out_dir)
    tokenizer = tokenizer_from_manifest(clip_info)
    scenes = unclip_training_scenes(quick, seed)
    e = clip_embeddings(clip_model, tokenizer, scenes)
    null = empty_caption_embeddings(clip_model, tokenizer)
    torch.manual_seed(seed)
    model = DiffusionPrior(SCENES_PRIOR)
    model.fit_standardisation(e["image_embed"])
    schedule = NoiseSchedule.make(
        UNCLIP_SCHEDULE["kind"], UNCLIP_SCHEDULE["num_timesteps"]
    )
    names = ("text_states", "text_embed", "text_mask")
    static = {
        "config": SCENES_PRIOR.to_dict(),
        "schedule": UNCLIP_SCHEDULE,
        "prediction_type": cfg.prediction_type,
        "guidance_scale": PRIOR_GUIDANCE,
        "candidates": 2,
        "sampling_steps": 25,
        "clip_sha256": clip_info["sha256"],
    }
    targets = model.standardise(e["image_embed"])

    def train(prior, config, **kw):
        return train_diffusion(
            prior,
            schedule,
            targets,
            config=config,
            conditions={k: (e[k], null[k]) for k in names},
            accelerator=accelerator,
            **kw,
        )

    run = run_fields("scenes-prior", cfg, seed, quick, static)
    result, last, budgets, decays = train_budgets(
        "scenes-prior", out_dir, cfg, run, model, train, accelerator=accelerator
    )
    fields = unclip_fields(
        "scenes-prior",
        cfg,
        result,
        seed=seed,
        quick=quick,
        device="cpu",
        accelerator=accelerator,
    )
    info = {
        **fields,
        **decay_fields(cfg, result, last),
        **static,
        "budget_steps": list(budgets),
        "budget_cooldown_steps": decays,
        "training_images": len(scenes),
        "two_object_fraction": LDM_TWO_OBJECT_FRACTION,
    }
    path = pretrained.checkpoint_path("scenes-prior", out_dir)
    return save_checkpoint(path, last.ema.model, info, accelerator=accelerator)


def _prior_setting(pipe, scenes, real_vs_real: float, seed: int, **setting) -> dict:
    """measure_prior_on at one setting (guidance_scale, candidates), with its spread."""
    row = measure_prior_on(pipe, scenes, seed=seed, spread=True, **setting)
    return {**row, "spread": prior_spread({**row, "real_vs_real": real_vs_real})}


def measure_prior(out_dir=None, *, quick=False, seed=0, device="cpu") -> dict:
    """Cosine of the prior's samples with the true image embeddings of captions it
    never saw (none of them a training caption: checked against the recipe's training
    set), beside the text-embedding baseline and real-vs-real, and how much its draws of
    one caption differ (prior_spread)."""
    clip_model, clip_info = pretrained.load_pretrained("scenes-clip", None, out_dir)
    prior, info = pretrained.load_pretrained("scenes-prior", None, out_dir)
    schedule = pretrained.schedule_from_manifest(info)
    pipe = MiniDALLE2(
        prior=prior,
        clip_model=clip_model,
        tokenizer=tokenizer_from_manifest(clip_info),
        prior_schedule=schedule,
        prior_guidance=info["guidance_scale"],
    )
    n, groups = (16 if quick else 1000), {}
    seen = unclip_training_captions(info["seed"]) if not quick else set()
    memo = MeasureMemo("scenes-prior", out_dir, ("scenes-clip", "scenes-prior"), quick)

    def measure_group(k, split, two):
        scenes = unseen_scenes(
            n, seed_of(seed, "held-out captions", 10 * k), split, two, seen
        )
        again = render_scenes(
            scenes.objects,
            scenes.relation,
            scenes.position,
            SCENE_SIZE,
            seed=seed_of(seed, "real scenes, again", k),
        )[0]
        row = measure_prior_on(pipe, scenes, seed=seed, spread=True)
        row["real_vs_real"] = real = cosine(
            pipe.encode_images(again).cpu(), pipe.encode_images(scenes.images).cpu()
        )
        row["one_candidate"] = _prior_setting(pipe, scenes, real, seed, candidates=1)
        row["sweep"] = {
            f"{w:g}": _prior_setting(pipe, scenes, real, seed, guidance_scale=w)
            for w in PRIOR_SWEEP
        }
        row["captions"] = n
        row["two_object_share"] = (scenes.num_objects == 2).float().mean().item()
        row["training_captions"] = sum(c in seen for c in scenes.captions)
        row["captions_sha256"] = captions_sha256(scenes.captions)
        row["spread"] = prior_spread(row)
        return row

    for k, (name, (split, two)) in enumerate(PRIOR_GROUPS.items()):
        row = memo(name, lambda k=k, s=split, t=two: measure_group(k, s, t))
        groups[name] = row
        print(f"{name}: {row}", flush=True)
    metrics = {
        "groups": groups,
        "sampler": {
            "num_steps": 25,
            "guidance_scale": info["guidance_scale"],
            "candidates": 2,
        },
    }
    write_manifest(
        pretrained.checkpoint_path("scenes-prior", out_dir),
        {**info, "metrics": metrics},
    )
    memo.finish()
    return pretrained.manifest("scenes-prior", out_dir)


PRIOR = Recipe(
    name="scenes-prior",
    builds="the mini DALL-E 2's prior (caption -> CLIP image embedding)",
    chapter=9,
    train=train_prior,
    measure=measure_prior,
    needs=("scenes-clip",),
)

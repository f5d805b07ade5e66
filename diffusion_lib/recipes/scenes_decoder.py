"""Chapter 9's decoder (32x32 scenes from their CLIP image embeddings), and the
measurement of the whole mini DALL-E 2: text -> prior -> decoder -> upsampler."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import torch

from .. import pretrained
from ..clip import tokenizer_from_manifest
from ..data import SCENE_SIZE, render_scenes, scene_prompts
from ..metrics import (
    SceneJudge,
    fid_kid_with,
    keeps_objects,
    scene_accuracy,
    scene_features,
)
from ..pipelines import MiniDALLE2, MiniStableDiffusion
from ..schedules import NoiseSchedule
from ..train import TrainConfig, save_checkpoint, train_diffusion, write_manifest
from ..unclip import DecoderConfig, UnCLIPDecoder, downsample
from ..unet import UNetConfig
from .base import Recipe, seed_of
from .dalle2 import (
    UNCLIP_BASE_SIZE,
    UNCLIP_SCHEDULE,
    clip_embeddings,
    unclip_fields,
    unclip_training_scenes,
)
from .measure import (
    LDM_GROUPS,
    SCENE_MEASURE_PROMPTS,
    guidance_sweep,
    measure_binding,
    measure_scene_pipeline,
)
from .scenes_ldm import LDM_TWO_OBJECT_FRACTION

# The decoder: a pixel UNet at 32x32 that sees the CLIP image embedding twice (added to
# the time embedding, and as four context tokens for the attention at 8x8).
SCENES_DECODER = DecoderConfig(
    unet=UNetConfig(
        base_channels=32,
        channel_mults=(1, 2, 2),
        attention_levels=(2,),
        context_dim=64,
    ),
    embed_dim=64,
    num_tokens=4,
)
SCENES_DECODER_TRAIN = TrainConfig(
    steps=3500,
    batch_size=64,
    lr=1e-3,
    warmup=200,
    ema_decay=0.999,
    p_uncond=0.1,  # the image embedding is zeroed 10% of the time (guidance)
    prediction_type="eps",
    loss_weighting="none",
    seed=0,
)
# a smoke run: through warm-up, every file written
SCENES_DECODER_QUICK = replace(SCENES_DECODER_TRAIN, steps=4, warmup=2, batch_size=16)
DECODER_GUIDANCE = 3.0
DECODER_SWEEP = (1.0, 3.0, 5.0)
# real scenes whose variations are judged, half with one object: 50 sources gave a
# standard error of 0.05 on the one-object share, too wide for a gate at 0.90
VARIATION_SOURCES = 300
ABLATION_GROUPS = {k: LDM_GROUPS[k] for k in ("one object, seen", "two objects, seen")}


def train_decoder(out_dir, *, quick=False, seed=0, device="cpu", accelerator=None):
    """32x32 scenes from their CLIP image embeddings."""
    cfg = replace(SCENES_DECODER_QUICK if quick else SCENES_DECODER_TRAIN, seed=seed)
    device = torch.device(device)
    clip_model, clip_info = pretrained.load_pretrained("scenes-clip", device, out_dir)
    scenes = unclip_training_scenes(quick, seed)
    start = time.perf_counter()
    embeds = clip_embeddings(clip_model, tokenizer_from_manifest(clip_info), scenes)
    encode_seconds = time.perf_counter() - start
    images = downsample(scenes.images, SCENE_SIZE // UNCLIP_BASE_SIZE)
    schedule = NoiseSchedule.make(
        UNCLIP_SCHEDULE["kind"], UNCLIP_SCHEDULE["num_timesteps"]
    )
    torch.manual_seed(seed)
    model = UnCLIPDecoder(SCENES_DECODER).to(device)
    null = torch.zeros(SCENES_DECODER.embed_dim)
    result = train_diffusion(
        model,
        schedule,
        images,
        config=cfg,
        conditions={"image_embed": (embeds["image_embed"], null)},
        accelerator=accelerator,
    )
    fields = unclip_fields(
        "scenes-decoder",
        cfg,
        result,
        seed=seed,
        quick=quick,
        device=device,
        accelerator=accelerator,
    )
    info = {
        **fields,
        "config": SCENES_DECODER.to_dict(),
        "image_size": UNCLIP_BASE_SIZE,
        "clip_sha256": clip_info["sha256"],
        "training_images": len(scenes),
        "two_object_fraction": LDM_TWO_OBJECT_FRACTION,
        "encode_seconds": round(encode_seconds, 1),
        "guidance_scale": DECODER_GUIDANCE,
    }
    path = pretrained.checkpoint_path("scenes-decoder", out_dir)
    return save_checkpoint(path, result.ema.model, info, accelerator=accelerator)


def embedding_ablation(pipe, n, seed, steps, groups=None) -> dict:
    """The paper's Sec. 5.1 in miniature: the decoder given (a) the true image embedding
    of a real scene with the prompt's labels, (b) the prior's sample, (c) the text
    embedding in place of an image embedding: prompt accuracy and FID of each. groups:
    measure_scene_pipeline's rows on the same prompts and seeds, whose "prior" numbers
    are reused."""
    judge, feats, out = SceneJudge(), scene_features(pipe.clip), {}
    for k, (name, (split, two)) in enumerate(ABLATION_GROUPS.items()):
        captions, labels = scene_prompts(n, seed_of(seed, "prompts", k), split, two)
        real_seed = seed_of(seed, "real scenes", k)
        real = render_scenes(*labels, SCENE_SIZE, seed=real_seed)[0]
        source_seed = seed_of(seed, "embedding sources", k)
        source = render_scenes(*labels, SCENE_SIZE, seed=source_seed)[0]
        out[name], whats = {}, ["true image embedding", "prior", "text embedding"]
        if groups is not None:  # the same prompts, seeds and real images: reuse them
            drop = ("prompts", "real_vs_real")
            row = groups[name]
            out[name]["prior"] = {key: v for key, v in row.items() if key not in drop}
            whats.remove("prior")
        for what in whats:
            if what == "true image embedding":
                e = pipe.encode_images(source)
            elif what == "prior":
                e = pipe.prior_embeddings(captions, seed=seed + k)
            else:
                e = pipe.encode_prompts(captions)["text_embed"]
            fake = pipe.from_embeddings(e, num_steps=steps, seed=seed + k)
            out[name][what] = {
                **scene_accuracy(judge(fake), *labels),
                **fid_kid_with(feats, fake, real, min(100, n)),
            }
            print(f"ablation {name}, {what}: {out[name][what]}", flush=True)
    return out


def measure_variations(pipe, n, seed, steps, per_source=2) -> dict:
    """Variations of n real scenes (one and two objects): the share that keeps every
    object's shape and colour (open-set judge), and the whole-scene accuracy."""
    captions, labels = scene_prompts(
        n, seed_of(seed, "variation prompts"), "train", 0.5
    )
    source_seed = seed_of(seed, "variation sources")
    source = render_scenes(*labels, SCENE_SIZE, seed=source_seed)[0]
    fake = pipe.variations(source, per_source, num_steps=steps, seed=seed)
    repeated = labels.repeat_interleave(per_source)
    verdict = SceneJudge()(fake)
    kept = keeps_objects(verdict, *repeated)
    two = repeated[0][:, 1, 0] >= 0
    return {
        "sources": n,
        "per_source": per_source,
        "shape_and_colour": kept.float().mean().item(),
        "shape_and_colour_one_object": kept[~two].float().mean().item(),
        "shape_and_colour_two_objects": kept[two].float().mean().item(),
        "one_object_images": int((~two).sum()),
        **scene_accuracy(verdict, *repeated),
    }


def measure_dalle2(out_dir=None, *, quick=False, seed=0, device="cpu") -> dict:
    """Measure the whole mini DALL-E 2 (text -> prior -> decoder -> upsampler) as the
    mini SD is measured, on the same prompts and seeds (SCENE_MEASURE_PROMPTS per
    group: chapter 10 compares them), plus the ablation and variations; the figures
    go into the decoder's manifest."""
    pipe = MiniDALLE2.from_pretrained(None, out_dir)
    n, steps = (8, 2) if quick else (SCENE_MEASURE_PROMPTS, 50)
    sweep_steps = 2 if quick else 25
    metrics = {
        "judge": "open-set scene judge (diffusion_lib.judge.SceneJudge)",
        "features": "scene appearance features (diffusion_lib.metrics.scene_features)",
        "sampler": {
            "decoder": {
                "sampler": "ddim",
                "num_steps": steps,
                "guidance_scale": pipe.guidance_scale,
            },
            "prior": {
                "num_steps": pipe.prior_steps,
                "guidance_scale": pipe.prior_guidance,
                "candidates": pipe.candidates,
            },
            "upsampler": {"num_steps": pipe.upsampler_steps},
        },
        "groups": (groups := measure_scene_pipeline(pipe, n, seed, steps)),
        "ablation": embedding_ablation(pipe, n, seed, steps, groups),
        "variations": measure_variations(
            pipe, 4 if quick else VARIATION_SOURCES, seed, steps
        ),
        "guidance_sweep": guidance_sweep(
            pipe, n, seed, sweep_steps, scales=DECODER_SWEEP
        ),
        "guidance_sweep_steps": sweep_steps,
        # measured here for both minis, on the same prompts and seeds (chapter 10)
        "binding": measure_binding(
            {
                "mini DALL-E 2": pipe,
                "mini SD": MiniStableDiffusion.from_pretrained(None, out_dir),
            },
            n,
            seed,
            steps,
        ),
    }
    print(json.dumps(metrics, indent=1))
    info = pretrained.manifest("scenes-decoder", out_dir)
    write_manifest(
        pretrained.checkpoint_path("scenes-decoder", out_dir),
        {**info, "metrics": metrics},
    )
    return pretrained.manifest("scenes-decoder", out_dir)


DECODER = Recipe(
    name="scenes-decoder",
    builds="the mini DALL-E 2's decoder (then the whole pipeline measured)",
    chapter=9,
    train=train_decoder,
    measure=measure_dalle2,
    devices=("cpu", "cuda"),
    needs=("scenes-clip", "scenes-prior", "scenes-upsampler", "scenes-ldm"),
)

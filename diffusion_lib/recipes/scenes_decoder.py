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
from .base import (
    MeasureMemo,
    Recipe,
    decay_fields,
    run_fields,
    seed_of,
    train_budgets,
    train_twin,
)
from .dalle2 import (
    UNCLIP_BASE_SIZE,
    UNCLIP_SCHEDULE,
    clip_embeddings,
    empty_caption_embeddings,
    unclip_fields,
    unclip_training_scenes,
)
from .measure import (
    LDM_GROUPS,
    SCENE_MEASURE_PROMPTS,
    guidance_sweep,
    measure_binding,
    measure_budget_points,
    measure_scene_pipeline,
)
from .scenes_ldm import LDM_TWO_OBJECT_FRACTION

# The decoder: a pixel UNet at 32x32, as the paper builds it on GLIDE (Sec. 2.1): the
# CLIP image embedding projected and added to the time embedding and as four extra
# context tokens, the caption's CLIP text embedding added too and its token states
# after those four tokens (the text pathway the paper keeps), read at 8x8 by GLIDE's
# attention (one softmax over the context tokens and the pixels).
SCENES_DECODER = DecoderConfig(
    unet=UNetConfig(
        base_channels=32,
        channel_mults=(1, 2, 2),
        attention_levels=(2,),
        context_dim=64,
        glide_attention=True,
    ),
    embed_dim=64,
    num_tokens=4,
    text_conditioning=True,
    text_width=64,
)
SCENES_DECODER_TRAIN = TrainConfig(
    # the decoder's share of the mini DALL-E 2's budget (chapter 10; scenes_prior)
    steps=3000,
    batch_size=64,
    lr=1e-3,
    warmup=200,
    lr_schedule="constant",  # its checkpoints along the run are chapter 10's budgets
    ema_decay=0.999,
    p_uncond=0.1,  # the image embedding is zeroed 10% of the time (guidance)
    # v, as the upsampler: with eps, x0_hat = (x_t - sqrt(1 - a) eps_hat) / sqrt(a)
    # multiplies the error of eps_hat by 1/sqrt(a) (over 3 above t = 800), and DDIM's
    # trajectory drifted into noisy backgrounds there (chapter 9)
    prediction_type="v",
    loss_weighting="none",
    seed=0,
)
# the caption (its embedding, token states and mask) is replaced by the empty
# caption's 50% of the time, independently of the image embedding (the paper, Sec. 2.1)
CAPTION_DROP = 0.5
# a smoke run: through warm-up, every file written (8 steps: 4 distinct budgets)
SCENES_DECODER_QUICK = replace(SCENES_DECODER_TRAIN, steps=8, warmup=2, batch_size=16)
# the paper's Sec. 5.1 decoder conditioned on CLIP text embeddings: a twin trained on
# the caption's text embedding in the image embedding's place, for the steps of the
# quarter-run checkpoint (same initial weights and batches)
TEXT_TWIN = "text"
DECODER_GUIDANCE = 3.0
DECODER_SWEEP = (1.0, 3.0, 5.0)
# real scenes whose variations are judged, half with one object: 50 sources gave a
# standard error of 0.05 on the one-object share, too wide for a gate at 0.90
VARIATION_SOURCES = 300
TEXT_CONDITIONS = ("text_embed", "text_states", "text_mask")
ABLATION_GROUPS = {k: LDM_GROUPS[k] for k in ("one object, seen", "two objects, seen")}


def decoder_conditions(
    config: DecoderConfig, e: dict, null: dict, p_uncond: float, embedding="image_embed"
) -> dict:
    """train_diffusion's conditions for a decoder, from clip_embeddings `e` and the
    empty caption's `null` (empty_caption_embeddings): `embedding` (the image
    embedding; "text_embed" for the twin on text embeddings) in the image embedding's
    slot, zeroed with probability p_uncond, and, for a decoder that reads the caption
    (text_conditioning), its embedding, token states and mask, replaced by the empty
    caption's with probability CAPTION_DROP on rows of their own."""
    zeros = torch.zeros(config.embed_dim)
    out = {"image_embed": (e[embedding], zeros, p_uncond)}
    if config.text_conditioning:
        out.update({k: (e[k], null[k], CAPTION_DROP) for k in TEXT_CONDITIONS})
    return out


def train_decoder(out_dir, *, quick=False, seed=0, device="cpu", accelerator=None):
    """32x32 scenes from their CLIP image embeddings and captions, and the twin
    conditioned on text embeddings for a quarter of the run."""
    cfg = replace(SCENES_DECODER_QUICK if quick else SCENES_DECODER_TRAIN, seed=seed)
    device = torch.device(device)
    clip_model, clip_info = pretrained.load_pretrained("scenes-clip", device, out_dir)
    tokenizer = tokenizer_from_manifest(clip_info)
    scenes = unclip_training_scenes(quick, seed)
    start = time.perf_counter()
    e = clip_embeddings(clip_model, tokenizer, scenes)
    encode_seconds = time.perf_counter() - start
    images = downsample(scenes.images, SCENE_SIZE // UNCLIP_BASE_SIZE)
    schedule = NoiseSchedule.make(
        UNCLIP_SCHEDULE["kind"], UNCLIP_SCHEDULE["num_timesteps"]
    )
    null = empty_caption_embeddings(clip_model, tokenizer)

    def conditions(embedding: str) -> dict:
        return decoder_conditions(SCENES_DECODER, e, null, cfg.p_uncond, embedding)

    static = {
        "config": SCENES_DECODER.to_dict(),
        "schedule": UNCLIP_SCHEDULE,
        "prediction_type": cfg.prediction_type,
        "image_size": UNCLIP_BASE_SIZE,
        "clip_sha256": clip_info["sha256"],
        "guidance_scale": DECODER_GUIDANCE,
        "caption_drop": CAPTION_DROP,
    }
    name = "scenes-decoder"

    def trainer(embedding: str, accelerator=None):
        def train(decoder, config, **kw):
            return train_diffusion(
                decoder,
                schedule,
                images,
                config=config,
                conditions=conditions(embedding),
                accelerator=accelerator,
                **kw,
            )

        return train

    torch.manual_seed(seed)
    model = UnCLIPDecoder(SCENES_DECODER).to(device)
    result, last, budgets, decays = train_budgets(
        name,
        out_dir,
        cfg,
        run_fields(name, cfg, seed, quick, static),
        model,
        trainer("image_embed", accelerator),
        device=device,
        accelerator=accelerator,
    )
    fields = unclip_fields(
        name,
        cfg,
        result,
        seed=seed,
        quick=quick,
        device=device,
        accelerator=accelerator,
    )
    twin_cfg = replace(cfg, steps=budgets[1])
    torch.manual_seed(seed)  # the same initial weights
    twin_model = UnCLIPDecoder(SCENES_DECODER).to(device)
    twin_static = {**static, "image_embed": "the caption's CLIP text embedding"}
    twin_fields = run_fields(name, twin_cfg, seed, quick, twin_static)
    twin = train_twin(
        name,
        out_dir,
        TEXT_TWIN,
        twin_fields,
        twin_cfg,
        twin_model,
        trainer("text_embed"),
        device=device,
    )
    info = {
        **fields,
        **decay_fields(cfg, result, last),
        **static,
        "budget_steps": list(budgets),
        "budget_cooldown_steps": decays,
        "twins": {TEXT_TWIN: twin},
        "training_images": len(scenes),
        "two_object_fraction": LDM_TWO_OBJECT_FRACTION,
        "encode_seconds": round(encode_seconds, 1),
    }
    path = pretrained.checkpoint_path(name, out_dir)
    return save_checkpoint(path, last.ema.model, info, accelerator=accelerator)


def embedding_ablation(pipe, n, seed, steps, groups=None) -> dict:
    """The paper's Sec. 5.1 in miniature: the decoder given (a) the true image embedding
    of a real scene with the prompt's labels, (b) the prior's sample, (c) the text
    embedding in place of an image embedding, each with the caption (for a decoder
    that reads it): prompt accuracy and FID of each. groups:
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
            # every row with the caption, as the pipeline decodes the prior's: only the
            # embedding differs
            fake = pipe.from_embeddings(
                e, captions=captions, num_steps=steps, seed=seed + k
            )
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


# the paper's Sec. 5.1 ablation (small models, FID on a test set, guidance swept
# for each): a decoder conditioned on CLIP text embeddings 9.16, the unCLIP stack
# with the prior 7.99, text embeddings fed zero-shot to the image-embedding decoder
# 16.55
PAPER_ABLATION_FID = {
    "decoder on text embeddings": 9.16,
    "unCLIP (prior)": 7.99,
    "text embedding, zero-shot": 16.55,
}


class WithEmbedding:
    """A mini DALL-E 2 that samples with `embedding` ("prior" or "text", see
    MiniDALLE2.__call__), called as measure_scene_pipeline calls a pipeline."""

    def __init__(self, pipe: MiniDALLE2, embedding: str):
        self.pipe, self.embedding = pipe, embedding
        self.text_encoder = pipe.text_encoder

    def __call__(self, prompts, **kwargs):
        return self.pipe(prompts, embedding=self.embedding, **kwargs)


def budget_stacks(out_dir=None) -> list[dict]:
    """The mini DALL-E 2's training budgets: the k-th checkpoint each of its three
    networks kept ({"prior": step, "decoder": step, "upsampler": step}), smallest
    first (compare.budget_points pairs them with the mini SD's)."""
    kept = {
        part: pretrained.manifest(f"scenes-{part}", out_dir).get("budget_steps") or []
        for part in ("prior", "decoder", "upsampler")
    }
    counts = {len(v) for v in kept.values()}
    if counts == {0}:
        return []
    if len(counts) != 1:
        raise ValueError(
            f"the three networks kept different numbers of budgets: {kept}"
        )
    return [{part: v[k] for part, v in kept.items()} for k in range(counts.pop())]


def measure_dalle2_budgets(out_dir, metrics, *, n, seed, steps, memo=None) -> dict:
    """Each budget's stack on the pipeline's prompts, seeds and n: groups and binding
    (the whole runs' are the pipeline's own, measured above). {decoder step: ...}
    memo: a MeasureMemo that keeps each budget's figures as they are measured."""
    memo = memo or MeasureMemo.none
    stacks, out = budget_stacks(out_dir), {}
    for k, stack in enumerate(stacks):
        if k == len(stacks) - 1:  # the whole runs: the shipped pipeline
            point = {
                "groups": metrics["groups"],
                "binding": metrics["binding"]["mini DALL-E 2"],
            }
        else:
            label = f"budget {k + 1}"
            build = lambda s=stack: MiniDALLE2.from_pretrained(None, out_dir, steps=s)  # noqa: E731

            def measure(b=build, label=label):
                return measure_budget_points({label: b}, n, seed, steps, n)[label]

            point = memo(label, measure)
        out[str(stack["decoder"])] = {"steps": stack, **point}
    return out


def paper_ablation(out_dir, budgets: dict, *, n, seed, steps, memo=None) -> dict:
    """The paper's Sec. 5.1 at the quarter-run budget, every decoder trained for the
    same steps: the twin decoder trained on text embeddings (sampled with them), the
    unCLIP stack (its budget point, measured in measure_dalle2_budgets on the same
    prompts and seeds) and the text embedding fed zero-shot to the image-embedding
    decoder; prompt accuracy and FID on ABLATION_GROUPS, the paper's FID beside.
    memo: a MeasureMemo that keeps each row as it is measured."""
    memo = memo or MeasureMemo.none
    stacks = budget_stacks(out_dir)
    if len(stacks) < 2:
        return {}
    quarter = stacks[1]
    twins = pretrained.manifest("scenes-decoder", out_dir).get("twins") or {}
    if twins.get(TEXT_TWIN, {}).get("steps") != quarter["decoder"]:
        raise ValueError(
            f"the text-embedding decoder was trained for {twins.get(TEXT_TWIN)}, not "
            f"the quarter run's {quarter['decoder']} steps"
        )
    text = MiniDALLE2.from_pretrained(
        None, out_dir, steps=quarter, twins={"decoder": TEXT_TWIN}
    )
    stack = MiniDALLE2.from_pretrained(None, out_dir, steps=quarter)
    unclip = budgets[str(quarter["decoder"])]["groups"]
    rows = {
        "decoder on text embeddings": memo(
            "paper ablation: decoder on text embeddings",
            lambda: measure_scene_pipeline(
                WithEmbedding(text, "text"), n, seed, steps, ABLATION_GROUPS
            ),
        ),
        "unCLIP (prior)": {g: unclip[g] for g in ABLATION_GROUPS},
        "text embedding, zero-shot": memo(
            "paper ablation: text embedding, zero-shot",
            lambda: measure_scene_pipeline(
                WithEmbedding(stack, "text"), n, seed, steps, ABLATION_GROUPS
            ),
        ),
    }
    return {"steps": quarter, "rows": rows, "paper_fid": PAPER_ABLATION_FID}


# the checkpoints whose weights the mini DALL-E 2's figures depend on
DECODER_MEASURES = (
    "scenes-vae",
    "scenes-clip",
    "scenes-prior",
    "scenes-upsampler",
    "scenes-decoder",
    "scenes-ldm",
)


def measure_dalle2(out_dir=None, *, quick=False, seed=0, device="cpu") -> dict:
    """Measure the whole mini DALL-E 2 (text -> prior -> decoder -> upsampler) as the
    mini SD is measured, on the same prompts and seeds (SCENE_MEASURE_PROMPTS per
    group: chapter 10 compares them), plus the ablation and variations; the figures
    go into the decoder's manifest."""
    pipe = MiniDALLE2.from_pretrained(None, out_dir)
    n, steps = (8, 2) if quick else (SCENE_MEASURE_PROMPTS, 50)
    sweep_steps = 2 if quick else 25
    memo = MeasureMemo("scenes-decoder", out_dir, DECODER_MEASURES, quick)
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
        "groups": (
            groups := memo(
                "groups", lambda: measure_scene_pipeline(pipe, n, seed, steps)
            )
        ),
        "ablation": memo(
            "ablation", lambda: embedding_ablation(pipe, n, seed, steps, groups)
        ),
        "variations": memo(
            "variations",
            lambda: measure_variations(
                pipe, 4 if quick else VARIATION_SOURCES, seed, steps
            ),
        ),
        "guidance_sweep": memo(
            "guidance_sweep",
            lambda: guidance_sweep(pipe, n, seed, sweep_steps, scales=DECODER_SWEEP),
        ),
        "guidance_sweep_steps": sweep_steps,
        # measured here for both minis, on the same prompts and seeds (chapter 10)
        "binding": memo(
            "binding",
            lambda: measure_binding(
                {
                    "mini DALL-E 2": pipe,
                    "mini SD": MiniStableDiffusion.from_pretrained(None, out_dir),
                },
                n,
                seed,
                steps,
            ),
        ),
    }
    metrics["budgets"] = measure_dalle2_budgets(
        out_dir, metrics, n=n, seed=seed, steps=steps, memo=memo
    )
    metrics["paper_ablation"] = paper_ablation(
        out_dir, metrics["budgets"], n=n, seed=seed, steps=steps, memo=memo
    )
    print(json.dumps(metrics, indent=1))
    info = pretrained.manifest("scenes-decoder", out_dir)
    write_manifest(
        pretrained.checkpoint_path("scenes-decoder", out_dir),
        {**info, "metrics": metrics},
    )
    memo.finish()
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

"""How the recipes measure a model: prompt accuracy, FID / KID and their controls,
shared by the recipes and read by the chapters. Each function takes a pipeline (or a
model) and a seed, draws its prompts and real images from named seed streams
(base.SEED_STREAMS), and returns plain numbers; none of them writes a file."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import (
    IMAGE_SIZE,
    SCENE_SIZE,
    SceneLabels,
    ScenesData,
    captions_sha256,
    make_scenes,
    make_shapes,
    render_scenes,
    sample_labels,
    scene_prompts,
)
from ..metrics import (
    BINDING_OUTCOMES,
    BINDINGS,
    Judge,
    SceneJudge,
    attribute_binding,
    binding_outcomes,
    by_pair,
    diversity,
    fid_kid,
    fid_kid_with,
    image_statistics,
    judged_accuracy,
    scene_accuracy,
    scene_features,
)
from ..pipelines import generate_shapes
from ..unclip import downsample, enlarge
from ..vae import psnr
from .base import seed_of

# the prompt groups a text-to-image pipeline is measured on: name -> (split,
# two_object_fraction); the mini SD and the mini DALL-E 2 use the same ones
LDM_GROUPS = {
    "one object, seen": ("train", 0.0),
    "two objects, seen": ("train", 1.0),
    "one object, held out": ("holdout", 0.0),
    "two objects, held out": ("holdout", 1.0),
}
SCENE_MEASURE_PROMPTS = 200  # prompts per group, for the mini SD and the mini DALL-E 2


def shapes_quality(
    model,
    schedule,
    evaluator,
    n,
    seed,
    num_steps=50,
    guidance_scale=3.0,
    split="train",
    prediction_type="eps",
    sampler="ddim",
):
    """Open-set prompt accuracy, image statistics and FID / KID of n samples of a
    shapes model."""
    labels = sample_labels(n, seed=seed_of(seed, "shapes prompts"), split=split)
    fake = generate_shapes(
        model,
        schedule,
        labels,
        sampler=sampler,
        num_steps=num_steps,
        guidance_scale=guidance_scale,
        seed=seed,
        prediction_type=prediction_type,
    )
    real_seed = seed_of(seed, "shapes real images")
    real = make_shapes(n, IMAGE_SIZE, seed=real_seed, split=split).images
    verdict = Judge()(fake)
    pairs = {"by_pair": by_pair(verdict, labels)} if split == "holdout" else {}
    return {
        **judged_accuracy(verdict, labels),
        **image_statistics(verdict, labels),
        **fid_kid(evaluator, fake, real, kid_subset=min(100, n)),
        **pairs,
    }


def measure_scene_pipeline(
    pipe,
    n: int,
    seed: int,
    num_steps: int,
    groups=LDM_GROUPS,
    guidance_scale=None,
    verbose=True,
) -> dict:
    """Prompt accuracy (scene judge), FID / KID against real scenes of the same
    prompts (beside real vs real) for each group of prompts."""
    judge, out, feats = SceneJudge(), {}, scene_features(pipe.text_encoder)
    for k, (name, (split, two)) in enumerate(groups.items()):
        prompt_seed = seed_of(seed, "prompts", k)
        captions, labels = scene_prompts(n, prompt_seed, split, two)
        fake = pipe(
            captions, num_steps=num_steps, seed=seed + k, guidance_scale=guidance_scale
        )
        real = render_scenes(*labels, SCENE_SIZE, seed=seed_of(seed, "real scenes", k))
        other = render_scenes(
            *labels, SCENE_SIZE, seed=seed_of(seed, "real scenes, second", k)
        )
        out[name] = {
            **scene_accuracy(judge(fake), *labels),
            **fid_kid_with(feats, fake, real[0], min(100, n)),
            "real_vs_real": fid_kid_with(feats, other[0], real[0], min(100, n)),
            "prompts": n,
            "prompt_seed": prompt_seed,
            "sample_seed": seed + k,
            "captions_sha256": captions_sha256(captions),
        }
        if verbose:
            print(f"{name}: {out[name]}", flush=True)
    return out


def guidance_sweep(
    pipe,
    n: int,
    seed: int,
    num_steps: int,
    per_prompt: int = 4,
    scales=(1.0, 2.0, 3.0, 5.0, 8.0),
    verbose=True,
) -> dict:
    """Prompt accuracy, diversity and FID at each guidance scale, on n seen prompts
    (half one-object, half two-object), each drawn `per_prompt` times."""
    prompts = seed_of(seed, "sweep prompts")
    captions, labels = scene_prompts(n // per_prompt, prompts, "train", 0.5)
    captions = [c for c in captions for _ in range(per_prompt)]
    labels = labels.repeat_interleave(per_prompt)
    real_seed = seed_of(seed, "sweep real scenes")
    real = render_scenes(*labels, SCENE_SIZE, seed=real_seed)[0]
    judge, rows, feats = SceneJudge(), {}, scene_features(pipe.text_encoder)
    for scale in scales:
        fake = pipe(captions, num_steps=num_steps, seed=seed, guidance_scale=scale)
        rows[f"{scale:g}"] = {
            "guidance_scale": scale,
            "captions_sha256": captions_sha256(captions),
            **scene_accuracy(judge(fake), *labels),
            "diversity": diversity(fake, per_prompt),
            **fid_kid_with(feats, fake, real, min(100, len(captions))),
        }
        if verbose:
            print(f"guidance {scale:g}: {rows[f'{scale:g}']}", flush=True)
    rows["real"] = {"diversity": diversity(real, per_prompt)}
    return rows


def binding_prompts(n: int, seed: int, split: str = "train"):
    """n two-object prompts whose objects differ in shape and in colour ("a red circle
    ... a blue square"): the prompts on which attribute binding can be seen."""
    captions, labels, k = [], [], 0
    while len(captions) < n:
        c, drawn = scene_prompts(2 * n, seed + k, split, 1.0)
        keep = (drawn.objects[:, 0, :2] != drawn.objects[:, 1, :2]).all(1)
        captions += [x for x, ok in zip(c, keep) if ok]
        labels.append(drawn.select(keep))
        k += 1
    return captions[:n], SceneLabels.cat(labels).select(slice(0, n))


def measure_binding(pipes: dict, n: int, seed: int, steps: int) -> dict:
    """For each pipeline, on the same n binding prompts and seeds: the share of images
    that bind each colour to its shape, swap the two colours, or fail otherwise
    (metrics.attribute_binding), the same broken down by what went wrong
    (metrics.binding_outcomes, under "outcomes"), and the full prompt accuracy."""
    captions, labels = binding_prompts(n, seed_of(seed, "binding prompts"))
    judge, out = SceneJudge(), {}
    for name, pipe in pipes.items():
        verdict = judge(pipe(captions, num_steps=steps, seed=seed))
        kind = attribute_binding(verdict, labels[0])
        outcome = binding_outcomes(verdict, labels[0], labels[1])
        out[name] = {
            b: (kind == i).float().mean().item() for i, b in enumerate(BINDINGS)
        }
        out[name]["outcomes"] = {
            b: (outcome == i).float().mean().item()
            for i, b in enumerate(BINDING_OUTCOMES)
        }
        out[name]["joint"] = scene_accuracy(verdict, *labels)["joint"]
        out[name]["prompts"] = n
        out[name]["captions_sha256"] = captions_sha256(captions)
        print(f"binding, {name}: {out[name]}", flush=True)
    return out


def measure_budget_points(
    pipes: dict, n: int, seed: int, steps: int, binding_n: int
) -> dict:
    """Each training budget's pipeline ({label: a function that builds it}, built one
    at a time) on the prompts, seeds and n the shipped pipeline is measured on: prompt
    accuracy and FID per group (measure_scene_pipeline) and binding broken down by
    what went wrong (measure_binding)."""
    out = {}
    for label, build in pipes.items():
        pipe = build()
        out[label] = {
            "groups": measure_scene_pipeline(pipe, n, seed, steps),
            "binding": measure_binding({label: pipe}, binding_n, seed, steps)[label],
        }
    return out


def unseen_scenes(
    n: int,
    seed: int,
    split: str,
    two_object_fraction: float,
    seen: set,
    max_draws: int = 20,
) -> ScenesData:
    """n scenes whose captions are not in `seen`: drawn in batches of 2n from seeds
    seed, seed + 1, ... (make_scenes), keeping the unseen ones in order. With a small
    grammar, most one-object captions are training captions, so the kept scenes have
    more two objects than two_object_fraction asks (their share is in the scenes)."""
    kept = []
    for k in range(max_draws):
        pool = make_scenes(
            2 * n,
            SCENE_SIZE,
            seed=seed + k,
            split=split,
            two_object_fraction=two_object_fraction,
        )
        kept.append(pool.select([c not in seen for c in pool.captions]))
        if sum(len(x) for x in kept) >= n:
            break
    else:
        raise ValueError(f"fewer than {n} unseen captions in {max_draws} draws")
    fields = ("images", "objects", "relation", "position", "centres", "radii")
    tensors = [torch.cat([getattr(x, f) for x in kept])[:n] for f in fields]
    return ScenesData(*tensors, [c for x in kept for c in x.captions][:n])


def cosine(a, b) -> float:
    """Mean cosine similarity of two sets of embeddings, row by row."""
    return F.cosine_similarity(a, b, dim=-1).mean().item()


def measure_prior_on(
    pipe, scenes, guidance_scale=None, candidates=None, seed=0, spread=False
) -> dict:
    """Mean cosine(prior's embedding, the true image's embedding) over scenes, beside
    the text-embedding baseline; with spread=True also "draw_vs_draw", the mean cosine
    between two independent draws of the prior for the same caption (1.0 for a prior
    that gives every caption one embedding whatever the noise)."""
    true = pipe.encode_images(scenes.images).cpu()
    text = pipe.encode_prompts(scenes.captions)["text_embed"].cpu()

    def draw(s):
        return pipe.prior_embeddings(
            scenes.captions,
            guidance_scale=guidance_scale,
            candidates=candidates,
            seed=s,
        ).cpu()

    pred = draw(seed)
    out = {"prior": cosine(pred, true), "text_embedding": cosine(text, true)}
    if spread:
        out["draw_vs_draw"] = cosine(pred, draw(seed + 1))
    return out


def prior_spread(row: dict) -> float:
    """How much the prior's draws of one caption differ, as a share of how much two real
    drawings of it differ: (1 - draw_vs_draw) / (1 - real_vs_real); 0 for a collapsed
    prior, about 1 for one that varies as much as the data."""
    return (1 - row["draw_vs_draw"]) / (1 - row["real_vs_real"])


def upsampler_psnr(
    pipe, high: torch.Tensor, num_steps: int, seed=0, start_step=None
) -> dict:
    """PSNR (dB) against the real 64x64 images of the upsampler's and bicubic's
    enlargements of their 32x32 box-downsampled copies."""
    low = downsample(high, 2)
    up = pipe.upsample(low, num_steps=num_steps, seed=seed, start_step=start_step)
    bicubic = enlarge(low, high.shape[-1])
    return {
        "upsampler": psnr(up, high).mean().item(),
        "bicubic": psnr(bicubic, high).mean().item(),
    }

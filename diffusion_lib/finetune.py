"""Part IV's tools: a new word (chapter 11), editing (chapter 12), ControlNet (13):
the concept data, the adapters' training functions and how the chapters measure them.
The recipes that ship the checkpoints are in diffusion_lib.recipes (scenes_lora,
scenes_inversion, scenes_inpaint, scenes_controlnet).

The mini SD (scenes-ldm) never saw a diamond (a square standing on a corner) and its
tokenizer does not know the word. (A new *colour* was the first choice; the frozen VAE
cannot draw one: it turns off-palette colours into palette ones, measured by
`vae_reconstruction`, so no adapter of the UNet could teach it.) Two ways to teach the
new shape word, from CONCEPT_IMAGES captioned pictures:

- **LoRA** (`train_lora`): the word gets a new, *frozen* embedding row (the mean of the
  shape words', so it starts as "some shape"), and low-rank updates of the UNet's
  attention projections learn what it means. Batches mix the concept pictures with the
  usual scenes (DreamBooth's "prior preservation", Ruiz et al. 2023) so that the old
  prompts are not forgotten.
- **Textual inversion** (`train_textual_inversion`): the word's embedding row is the
  only thing trained; the text encoder and the UNet stay frozen, so old prompts are
  exactly as before, and the word can only mean something the frozen UNet can draw.

Both are measured the same way (`measure_concept`): prompt accuracy on concept prompts
that are not training captions (the open-set judge with the new shape added to its
templates), and on old prompts: two-object captions that are not training captions, and
one-object captions, which are all training captions (the grammar has few one-object
full captions, `one_object_captions`, and every one of them is among the captions of
the scenes the mini SD was trained on, `training_captions`); before and after.

Recipes: `python -m diffusion_lib.recipes scenes-lora scenes-inversion`.
"""

from __future__ import annotations

import time
from functools import partial
from itertools import product

import torch

from . import compute, data, pretrained
from . import scale as _scale
from .adapters import (
    TrainableWords,
    add_lora,
    load_lora_state_dict,
    lora_state_dict,
)
from .controlnet import (
    layout_masks,
    mask_iou,
)
from .data import (
    ALL_COLOURS,
    ALL_SHAPES,
    BACKGROUND,
    COLOURS,
    SHAPES,
    SceneLabels,
    concept_scenes,
    full_captions,
    make_scenes,
    sample_scene_labels,
    scene_caption,
    scene_prompts,
    with_articles,
)
from .editing import (
    edit_labels,
    edited_object_right,
    object_masks,
    psnr_where,
    seam_band,
)
from .forward import diffusion_loss, draw_noise
from .judge import SceneJudge, scene_accuracy, scene_judge_config
from .loaders import (
    CONCEPT,
)
from .train import (
    TrainConfig,
    TrainResult,
    train_diffusion,
)

VAE_PROBES = ("diamond", "orange")  # what the frozen VAE can and cannot redraw
CONCEPT_IMAGES = 48  # "a few dozen" pictures of the new concept
PRESERVATION_IMAGES = 2000  # usual scenes mixed in (LoRA only)
CONCEPT_SHARE = 0.3  # share of each LoRA batch drawn from the concept pictures
LORA_RANK, LORA_ALPHA = 4, 4.0
LORA_TRAIN = TrainConfig(
    steps=2500, batch_size=32, lr=3e-3, warmup=100, ema_decay=0.99, p_uncond=0.1
)
INVERSION_TRAIN = TrainConfig(steps=1500, batch_size=32, lr=1e-2, warmup=50)
CONCEPT_SEED = 1100  # concept pictures for training; measurement uses other seeds
# old prompts measured beside the concept: group -> share of two-object scenes
OLD_GROUPS = {"one object, training captions": 0.0, "two objects, new captions": 1.0}
# the groups measured only on captions that are not training captions
NEW_CAPTION_GROUPS = ("concept", "two objects, new captions")


def concept_judge() -> SceneJudge:
    """The open-set scene judge that also knows the new shapes and colours
    (ALL_SHAPES, ALL_COLOURS)."""
    return SceneJudge(scene_judge_config(palette=dict(ALL_COLOURS), shapes=ALL_SHAPES))


@torch.no_grad()
def vae_reconstruction(pipe, n: int, seed: int, concepts=VAE_PROBES) -> dict:
    """Can the frozen VAE redraw a new concept at all? Prompt accuracy (judge that
    knows the new words) of n real concept scenes encoded and decoded, per concept,
    and the mean colour error of the redrawn objects."""
    out = {}
    for k, concept in enumerate(concepts):
        s = concept_scenes(n, seed + k, concept)
        redrawn = pipe.decode(pipe.vae.encode_scaled(s.images.to(pipe.device)))
        verdict = concept_judge()(redrawn)
        row = scene_accuracy(verdict, s.objects, s.relation, s.position)
        rgb = verdict.colour_rgb[:, 0]
        palette = torch.tensor(list(ALL_COLOURS.values()), dtype=rgb.dtype)
        asked = palette[s.objects[:, 0, 1]]
        row["colour_error"] = (rgb - asked).norm(dim=1).nanmean().item()
        out[concept] = row
    return out


@torch.no_grad()
def _encode(pipe, scenes) -> tuple[torch.Tensor, torch.Tensor]:
    """(scaled latents [N, 4, 8, 8], text states [N, L, D])."""
    latents = pipe.vae.encode_scaled(scenes.images.to(pipe.device))
    return latents, pipe.encode_prompts(scenes.captions)


def train_lora(
    pipe,
    concept,
    regular,
    config: TrainConfig = LORA_TRAIN,
    r: int = LORA_RANK,
    alpha: float = LORA_ALPHA,
    share: float = CONCEPT_SHARE,
    accelerator=None,
    init_seed: int | None = None,
) -> TrainResult:
    """Add LoRA (rank r) to pipe.unet's attention projections and train it on the
    concept scenes mixed with `regular` scenes (a `share` of each batch from the
    concept, on average). The pipeline must know the concept's word (teach_word). The
    UNet ends with the EMA of the adapter. accelerator: an 🤗 Accelerator for
    data-parallel training (diffusion_lib.scale), or None. init_seed: the seed of the
    adapter's A matrices (None: torch's global generator)."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    init = None if init_seed is None else torch.Generator().manual_seed(init_seed)
    add_lora(pipe.unet, r, alpha, generator=init)
    c_lat, c_ctx = _encode(pipe, concept)
    repeat = 1
    if regular is not None and share < 1:
        repeat = max(1, round(share / (1 - share) * len(regular) / len(concept)))
    parts = [(c_lat.repeat(repeat, 1, 1, 1), c_ctx.repeat(repeat, 1, 1))]
    if regular is not None and share < 1:
        parts.append(_encode(pipe, regular))
    latents, context = (torch.cat(x) for x in zip(*parts))
    null = pipe.encode_prompts([""])[0]
    result = train_diffusion(
        pipe.unet,
        pipe.schedule,
        latents,
        None,
        config,
        context=context,
        null_context=null,
        progress=False,
        accelerator=accelerator,
    )
    load_lora_state_dict(pipe.unet, lora_state_dict(result.ema.model))
    pipe.unet.eval()
    return result


def train_textual_inversion(
    pipe, concept, config: TrainConfig = INVERSION_TRAIN, accelerator=None
) -> TrainResult:
    """Train only the new word's embedding row (teach_word first) on the concept
    scenes, the UNet and the rest of the text encoder frozen: a visible loop, since
    the text states now depend on the trained row. accelerator: an 🤗 Accelerator for
    data-parallel training (diffusion_lib.scale), or None."""
    table = pipe.text_encoder.text.token_embedding
    if not isinstance(table, TrainableWords):
        raise ValueError("teach the pipeline its new word first (teach_word)")
    pipe.unet.requires_grad_(False).eval()
    pipe.text_encoder.requires_grad_(False).eval()
    table.new.requires_grad_(True)
    with torch.no_grad():
        latents = pipe.vae.encode_scaled(concept.images.to(pipe.device))
    tokens = pipe.tokenizer(concept.captions).to(pipe.device)
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.AdamW([table.new], lr=config.lr, weight_decay=0.0)

    def loss_of(rows):  # the mean loss over some rows of the batch
        context = pipe.text_encoder.text_states(rows["tokens"])  # grad reaches the row
        return diffusion_loss(
            pipe.unet,
            pipe.schedule,
            rows["x0"],
            {"context": context},
            pipe.prediction_type,
            t=rows["t"].to(pipe.device),
            eps=rows["eps"].to(pipe.device),
        )

    result, start = TrainResult(), time.perf_counter()
    counter = compute.StepCounter(
        "inversion", config.steps, _scale.processes(accelerator)
    )
    for _ in range(config.steps):
        idx = torch.randint(0, len(latents), (config.batch_size,), generator=gen)
        t, eps = draw_noise(pipe.schedule, latents[idx], gen)  # as diffusion_loss would
        opt.zero_grad(set_to_none=True)
        # loss_of(batch).backward(), or launched, its data-parallel share
        batch = {"x0": latents[idx], "tokens": tokens[idx], "t": t, "eps": eps}
        step_backward = partial(
            _scale.backward, accelerator, loss_of, batch, [table.new]
        )
        counter.count(step_backward, [table.new])  # its FLOPs (compute.py)
        loss = step_backward()
        opt.step()
        result.losses.append(loss.item())
    table.new.requires_grad_(False)
    result.seconds = time.perf_counter() - start
    result.flops_per_step = counter.record.flops_per_step
    return result


def concept_prompts(n: int, seed: int, word: str = CONCEPT):
    """n concept prompts that name every attribute (data.full_captions), with their
    labels (objects, relation, position)."""
    s = concept_scenes(n, seed, word, image_size=16)  # the labels are what is used
    return full_captions(*s.labels), s.labels


def _phrased(labels, seed: int) -> list[str]:
    """The captions data's make_scenes / concept_scenes give these labels with this
    seed, without drawing the images."""
    return with_articles(data.phrase_captions(*labels, seed))


scene_captions = data.scene_captions  # make_scenes' captions, without the images


def concept_captions(n: int, seed: int, word: str = CONCEPT) -> list[str]:
    """The captions of concept_scenes(n, seed, word), without drawing its images."""
    objects, relation, position = sample_scene_labels(n, seed, "all", 0.0)
    if word in ALL_SHAPES:
        objects[:, 0, 0] = ALL_SHAPES.index(word)
    else:
        objects[:, 0, 1] = tuple(ALL_COLOURS).index(word)
    return _phrased((objects, relation, position), seed)


def one_object_captions(split: str = "train") -> list[str]:
    """Every full caption (data.full_captions' phrasings) of one object whose shape and
    colour `split` allows: the whole one-object prompt group of a measurement."""
    rows = product(range(len(SHAPES)), range(len(COLOURS)), range(len(data.SIZES)))
    captions = []
    for shape, colour, size in rows:
        objects = torch.tensor([[shape, colour, size], [-1, -1, -1]])
        if data.scene_held_out(objects[None])[0].item() != (split == "holdout"):
            continue
        captions += [
            scene_caption(objects, -1, p, template=t)
            for p in range(len(data.POSITIONS))
            for t in range(len(data.shapes._TEMPLATES))
        ]
    return captions


def training_captions(
    concept_images: int = CONCEPT_IMAGES,
    preservation_images: int = PRESERVATION_IMAGES,
    seed: int = 0,
    directory=None,
) -> frozenset[str]:
    """Every caption an adapted mini SD was trained on: the training scenes of its UNet
    (scenes-ldm) and text encoder (scenes-clip), rebuilt from their manifests' size,
    seed and two-object share (make_scenes' 0.5 where none is recorded), and the adapter
    recipe's (seed's) concept pictures and preservation scenes. The defaults are the
    shipped scenes-lora's; scenes-inversion's are a subset (preservation_images=0)."""
    seen = set()
    for name in ("scenes-ldm", "scenes-clip"):
        info = pretrained.manifest(name, directory)
        n, two = info.get("training_images"), info.get("two_object_fraction", 0.5)
        if n:  # none: not trained on scenes (the tests' tiny models)
            seen.update(scene_captions(n, info["seed"], "train", two))
    seen.update(concept_captions(concept_images, CONCEPT_SEED + seed))
    if preservation_images:
        seen.update(scene_captions(preservation_images, seed + 1, "train"))
    return frozenset(seen)


def new_prompts(draw, n: int, seed: int, exclude) -> tuple[list[str], SceneLabels]:
    """The first n prompts of draw(m, seed) -> (captions [m], labels) that are not in
    `exclude`, for m = n, 2n, 4n, ... up to 64n: deterministic, and none of them a
    training caption when exclude = training_captions(...)."""
    m = n
    while m <= 64 * n:
        captions, labels = draw(m, seed)
        keep = [i for i, c in enumerate(captions) if c not in exclude][:n]
        if len(keep) == n:
            idx = torch.tensor(keep, dtype=torch.long)
            return [captions[i] for i in keep], labels.select(idx)
        m *= 2
    raise ValueError(f"fewer than {n} of {m // 2} drawn captions are new")


def measured_prompts(n: int, seed: int, exclude) -> dict:
    """{group: (captions [n], labels)} measured by measure_concept: the concept
    ("concept") and OLD_GROUPS, those of NEW_CAPTION_GROUPS drawn from captions not in
    `exclude` (new_prompts); the others as drawn (one-object full captions: most of
    them are training captions, see training_captions)."""

    draws = {"concept": (concept_prompts, seed + 7000)}
    for k, (name, two) in enumerate(OLD_GROUPS.items()):
        draw = lambda m, s, two=two: scene_prompts(m, s, "train", two)
        draws[name] = (draw, seed + 7100 + k)
    return {
        name: new_prompts(draw, n, s, exclude)
        if name in NEW_CAPTION_GROUPS
        else draw(n, s)
        for name, (draw, s) in draws.items()
    }


def caption_counts(n: int, seed: int, exclude) -> dict:
    """{group: how many of measured_prompts(n, seed, exclude)'s captions are in
    exclude}: 0 for NEW_CAPTION_GROUPS."""
    prompts = measured_prompts(n, seed, exclude)
    return {
        name: sum(c in exclude for c in captions)
        for name, (captions, _) in prompts.items()
    }


def measure_concept(pipe, n: int, seed: int, num_steps: int, exclude=None) -> dict:
    """Prompt accuracy on measured_prompts(n, seed, exclude): the concept (judged with
    the new shape) and each OLD_GROUPS group (the usual judge). exclude: the training
    captions (default: the shipped scenes-lora's, training_captions())."""
    if exclude is None:
        exclude = training_captions()
    prompts, row = measured_prompts(n, seed, exclude), {}
    for k, (name, (captions, labels)) in enumerate(prompts.items()):
        judge = concept_judge() if name == "concept" else SceneJudge()
        fake = pipe(captions, num_steps=num_steps, seed=seed + k)
        row[name] = scene_accuracy(judge(fake), *labels)
    return row


# ----------------------------------------------------------------------------------
# Chapter 12: image-to-image and inpainting

IMG2IMG_STRENGTHS = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0)


def edit_task(n: int, seed: int):
    """n seen scenes (half with two objects), one object of each to be replaced by
    another shape and colour: (scenes, which [n], edited objects [n, 2, 3], mask
    [n, 1, 64, 64], captions of the edited scenes)."""
    scenes = make_scenes(n, seed=seed, split="train", two_object_fraction=0.5)
    rng = torch.Generator().manual_seed(seed)
    two = scenes.objects[:, 1, 0] >= 0
    which = torch.where(two, torch.randint(0, 2, (n,), generator=rng), 0)
    edited = edit_labels(scenes.objects, which, seed)
    captions = full_captions(edited, scenes.relation, scenes.position)
    return scenes, which, edited, object_masks(scenes, which), captions


def measure_edits(fake, scenes, which, edited, mask) -> dict:
    """What an inpainting did: the edited object right inside the mask (open-set
    judge), the whole edited caption right, and PSNR against the source outside the
    mask away from the seam, and at the seam (editing.seam_band: 2 pixels on each side
    of the boundary between kept and regenerated latent cells, outside the mask)."""
    verdict = SceneJudge()(fake)
    band = seam_band(mask)
    far = (mask < 0.5) & ~band
    return {
        "inside": edited_object_right(verdict, edited, which, mask)
        .float()
        .mean()
        .item(),
        "joint": scene_accuracy(verdict, edited, scenes.relation, scenes.position)[
            "joint"
        ],
        "psnr_outside": psnr_where(fake, scenes.images, far).mean().item(),
        "psnr_seam": psnr_where(fake, scenes.images, band).mean().item(),
    }


def measure_img2img(pipe, n: int, seed: int, steps: int, strengths=IMG2IMG_STRENGTHS):
    """SDEdit on one-object scenes with a prompt that names only a new shape and colour
    ("a blue square": no size, no place, so that only the source can fix those): per
    strength, faithful to the prompt (shape and colour as asked) and to the source
    (the object's centre within 2 pixels of the source's and its size kept; PSNR)."""
    scenes = make_scenes(n, seed=seed, split="train", two_object_fraction=0.0)
    edited = edit_labels(scenes.objects, torch.zeros(n, dtype=torch.long), seed)
    captions = [
        scene_caption(o, r, p, template=i, omit=(True, True, True))
        for i, (o, r, p) in enumerate(zip(edited, scenes.relation, scenes.position))
    ]
    judge, rows = SceneJudge(), {}
    size = scenes.images.shape[-1]
    for s in strengths:
        fake = pipe.img2img(scenes.images, captions, s, num_steps=steps, seed=seed)
        v = judge(fake)
        found = v.objects[:, 0]
        moved = (v.centres[:, 0] - scenes.centres[:, 0].double()).norm(dim=1) * size
        kept = (moved <= 2.0) & (found[:, 2] == scenes.objects[:, 0, 2]) & v.valid
        rows[f"{s:g}"] = {
            "prompt (shape and colour)": (
                (found[:, 0] == edited[:, 0, 0])
                & (found[:, 1] == edited[:, 0, 1])
                & v.valid
            )
            .float()
            .mean()
            .item(),
            "source (place and size)": kept.float().mean().item(),
            "centre moved (pixels)": moved.nanmedian().item(),
            "psnr_to_source": psnr_where(
                fake, scenes.images, torch.ones_like(fake[:, :1])
            )
            .mean()
            .item(),
        }
    return rows


# ----------------------------------------------------------------------------------
# Chapter 13: ControlNet


def measure_control(pipe, n: int, seed: int, steps: int, scale: float = 1.0) -> dict:
    """On n fresh seen scenes (half two objects): mask IoU with the control and prompt
    accuracy, with the control (and the caption), with the control and no caption,
    and without control (the mini SD alone). The captions name every attribute
    (data.full_captions), so that the mini SD alone is not judged on a size or a place
    its caption never asked for."""
    scenes = make_scenes(n, seed=seed, split="train", two_object_fraction=0.5)
    control = layout_masks(scenes)
    labels = (scenes.objects, scenes.relation, scenes.position)
    captions, rows = full_captions(*labels), {}
    for name, prompts, ctl in (
        ("control + caption", captions, control),
        ("control, empty caption", [""] * n, control),
        ("caption only (no ControlNet)", captions, None),
    ):
        fake = pipe(
            prompts, num_steps=steps, seed=seed, control=ctl, control_scale=scale
        )
        iou = mask_iou(fake, control, BACKGROUND)
        rows[name] = {
            "mask_iou": iou.mean().item(),
            "mask_iou_p10": iou.quantile(0.1).item(),
            **scene_accuracy(SceneJudge()(fake), *labels),
        }
    return rows

"""Editing images with the mini SD (chapter 12): image-to-image and inpainting.

- **Image-to-image** (SDEdit, Meng et al. 2022) is `MiniStableDiffusion.img2img`:
  noise the source's latent to a strength s and denoise it with a new prompt.
- **Training-free inpainting** (RePaint, Lugmayr et al. 2022, Alg. 1), `repaint`: at
  every reverse step the known region (mask = 0) is replaced by the source's latent
  noised to the same step, so only the masked region is generated; after each step the
  sample is noised back U - 1 times and the step redone ("resampling"), which lets the
  generated region agree with the pasted one. Works on any trained model; here in
  latent space, where the mask is only 8x8.
- **A mask-conditioned UNet** (Stable Diffusion's inpainting model), `InpaintingUNet`:
  the UNet's input gains 5 channels, the latent of the masked image (4) and the mask
  at latent resolution (1), initialised at zero so that the fine-tuning starts from
  the text-to-image model; trained on scenes with masks over an object, a random
  rectangle or the whole image.

Convention: mask [B, 1, 64, 64] is 1 where the image is to be generated (as in
diffusers' inpainting pipelines), 0 where it is kept.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import COLOURS, SHAPES, scene_held_out
from .data.geometry import EXTENTS
from .forward import q_sample
from .samplers import ddim_step, guided_model_output, make_timesteps
from .unet import UNet

MAX_EXTENT = max(EXTENTS.values())  # any shape fits in a box of half-side 1.2 r
MASK_MARGIN = 2 / 64  # grown by 2 pixels at 64x64


def object_masks(scenes, which, margin: float = MASK_MARGIN) -> torch.Tensor:
    """[N, 1, S, S] float: 1 inside a square box around object which[i] of scene i
    that any shape of the same size would fit in (half-side MAX_EXTENT * r + margin),
    0 elsewhere."""
    n, s = len(scenes), scenes.images.shape[-1]
    which = torch.as_tensor(which).long().expand(n)
    centre = scenes.centres[torch.arange(n), which]  # [N, 2] (row, column)
    half = MAX_EXTENT * scenes.radii[torch.arange(n), which] + margin  # [N]
    if torch.isnan(half).any():
        raise ValueError("object_masks: a chosen object is absent from its scene")
    grid = (torch.arange(s) + 0.5) / s
    rows = (grid[None] - centre[:, :1]).abs() <= half[:, None]
    cols = (grid[None] - centre[:, 1:]).abs() <= half[:, None]
    return (rows[:, :, None] & cols[:, None, :]).float()[:, None]


def latent_mask(mask: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """Pixel mask [B, 1, S, S] -> latent mask [B, 1, S / f, S / f]: a latent cell is
    generated when any of its f x f pixels is (max-pooling)."""
    return F.max_pool2d(mask.float(), factor)


def masked_images(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The images with the masked region set to 0 (grey in [-1, 1]), as Stable
    Diffusion's inpainting model sees them."""
    return images * (mask < 0.5)


@torch.no_grad()
def repaint(
    pipe,
    images,
    mask,
    prompts,
    *,
    num_steps: int = 50,
    resample: int = 5,
    guidance_scale=None,
    seed: int = 0,
) -> torch.Tensor:
    """Training-free inpainting (RePaint, Alg. 1) with the pipeline's own UNet in
    latent space: images [B, 3, 64, 64], mask [B, 1, 64, 64] (1 = generate), prompts
    describing the whole result. Returns images [B, 3, 64, 64]. resample = U, the
    number of times each step is done (1 = no resampling)."""
    if resample < 1:
        raise ValueError(f"resample must be >= 1, got {resample}")
    device, sched = pipe.device, pipe.schedule
    known = pipe.vae.encode_scaled(images.to(device))  # z_0 of the source
    keep = 1 - latent_mask(mask).to(device)  # 1 where the source is kept
    context = pipe.encode_prompts(prompts)
    null = pipe.encode_prompts([""] * len(context))
    scale = pipe.guidance_scale if guidance_scale is None else guidance_scale
    gen = torch.Generator().manual_seed(seed)
    randn = lambda: torch.randn(known.shape, generator=gen).to(device)  # noqa: E731
    a = sched.alphas_cumprod.to(device)
    steps = make_timesteps(sched.num_timesteps, num_steps, "trailing")
    x = randn()
    for i, t in enumerate(steps):
        t_prev = steps[i + 1] if i + 1 < len(steps) else -1
        for u in range(resample):
            tt = torch.full((len(x),), t, device=device, dtype=torch.long)
            out = guided_model_output(
                pipe.unet, x, tt, {"context": context}, {"context": null}, scale
            )
            # unknown part: one ancestral step (DDIM with eta = 1 = DDPM's variance)
            x_unknown = ddim_step(
                sched,
                out,
                t,
                t_prev,
                x,
                eta=1.0,
                prediction_type=pipe.prediction_type,
                clip_sample=False,
                generator=gen,
            )
            # known part: the source noised to t_prev (Alg. 1, line 5)
            if t_prev >= 0:
                tp = torch.full((len(x),), t_prev, device=device, dtype=torch.long)
                x_known = q_sample(sched, known, tp, randn())
            else:
                x_known = known
            x = keep * x_known + (1 - keep) * x_unknown
            if u < resample - 1 and t_prev >= 0:  # noise back to t (Alg. 1, line 10)
                ratio = a[t] / a[t_prev]
                x = ratio.sqrt() * x + (1 - ratio).sqrt() * randn()
    return pipe.decode(x)


class InpaintingUNet(nn.Module):
    """Stable Diffusion's inpainting UNet: model(x_t [B, 4, h, w], t, context=...,
    cond=[B, 5, h, w]) = unet(concat(x_t, cond)), the UNet built with 9 input
    channels. cond holds the latent mask and the masked image's latent, in the order
    `inpaint_condition` makes for this model:

    * sd_order=True, Stable Diffusion's ([x_t, mask, masked latent]; diffusers'
      StableDiffusionInpaintPipeline feeds exactly this);
    * sd_order=False, the course's first layout ([x_t, masked latent, mask])."""

    def __init__(self, unet: UNet, sd_order: bool = False):
        super().__init__()
        self.unet, self.config, self.sd_order = unet, unet.config, sd_order

    @classmethod
    def from_text_to_image(
        cls, unet: UNet, extra_channels: int = 5, sd_order: bool = False
    ) -> InpaintingUNet:
        """A copy of a trained text-to-image UNet whose first convolution takes
        `extra_channels` more inputs, with zero weights (the model starts as the
        text-to-image one)."""
        cfg = copy.deepcopy(unet.config)
        cfg.in_channels = unet.config.in_channels + extra_channels
        new = UNet(cfg).to(next(unet.parameters()).device)
        state = unet.state_dict()
        w = state["conv_in.weight"]
        state["conv_in.weight"] = torch.cat(
            [w, w.new_zeros(w.shape[0], extra_channels, *w.shape[2:])], dim=1
        )
        new.load_state_dict(state)
        return cls(new, sd_order)

    def forward(self, x, t, context=None, cond=None):
        if cond is None:
            raise ValueError(
                "the inpainting UNet needs cond [B, 5, h, w] (the latent mask and "
                "the masked image's latent: see inpaint_condition)"
            )
        return self.unet(torch.cat([x, cond], dim=1), t, context=context)


def nearest_latent_mask(mask: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """Pixel mask [B, 1, S, S] -> [B, 1, S / f, S / f] by nearest-neighbour sampling
    (F.interpolate), the top-left pixel of each f x f cell: how Stable Diffusion's
    inpainting pipeline (and its training code) brings the mask to the latent grid."""
    s = mask.shape[-1] // factor
    return F.interpolate(mask.float(), size=(s, s))


@torch.no_grad()
def inpaint_condition(
    pipe,
    images,
    mask,
    batch_size: int = 500,
    *,
    sd_order: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """cond [B, 5, h, w] on pipe.device for images [B, 3, 64, 64] and masks [B, 1, 64,
    64] (1 = generate), encoded batch_size images at a time (for a training set of
    20000 in one pass, each activation of the VAE's first level alone, 16 x 64 x 64
    floats per image, would take 5.2 GB).

    sd_order=True, as Stable Diffusion: [the mask sampled by nearest neighbour
    (nearest_latent_mask), the scaled latent of the masked images *sampled* from the
    VAE's posterior with `generator`]. sd_order=False, the course's first layout:
    [the posterior mean of the masked images, the max-pooled mask (latent_mask)]."""
    device, masked = pipe.device, masked_images(images, mask)
    scale = pipe.vae.config.scaling_factor
    parts = []
    for i in range(0, len(masked), batch_size):
        chunk = masked[i : i + batch_size].to(device)
        if sd_order:
            parts.append(pipe.vae.encode(chunk).sample(generator) * scale)
        else:
            parts.append(pipe.vae.encode_scaled(chunk))
    z = torch.cat(parts)
    if sd_order:
        return torch.cat([nearest_latent_mask(mask).to(device), z], dim=1)
    return torch.cat([z, latent_mask(mask).to(device)], dim=1)


@torch.no_grad()
def inpaint(
    pipe,
    model: InpaintingUNet,
    images,
    mask,
    prompts,
    *,
    num_steps=50,
    guidance_scale=None,
    seed: int = 0,
) -> torch.Tensor:
    """Inpainting with a mask-conditioned UNet: images [B, 3, 64, 64] -> images; the
    unguided pass sees the same masked image, with the empty caption. One generator
    seeded with `seed` draws x_T and then (sd_order) the masked latent's sample, in
    the order of diffusers' StableDiffusionInpaintPipeline."""
    from .samplers import DDIMSampler, sample

    gen = torch.Generator().manual_seed(seed)
    shape = (len(images), *pipe.latent_shape)
    x_T = torch.randn(shape, generator=gen)
    cond = inpaint_condition(pipe, images, mask, sd_order=model.sd_order, generator=gen)
    context = pipe.encode_prompts(prompts)
    sampler = DDIMSampler(
        pipe.schedule, prediction_type=pipe.prediction_type, clip_sample=False
    )
    z = sample(
        model,
        sampler,
        shape,
        num_steps=num_steps,
        model_kwargs={"context": context, "cond": cond},
        uncond_kwargs={"context": pipe.encode_prompts([""] * len(cond)), "cond": cond},
        guidance_scale=pipe.guidance_scale
        if guidance_scale is None
        else guidance_scale,
        generator=gen,
        device=pipe.device,
        x_T=x_T,
    ).x0
    return pipe.decode(z)


def training_masks(scenes, seed: int = 0) -> torch.Tensor:
    """One mask per training scene [N, 1, S, S]: half a box around one of its objects,
    a quarter a random rectangle, a quarter the whole image (then the model is a
    text-to-image model again)."""
    rng = np.random.default_rng(seed)
    n, s = len(scenes), scenes.images.shape[-1]
    kind = rng.choice(3, size=n, p=[0.5, 0.25, 0.25])
    two = (scenes.objects[:, 1, 0] >= 0).numpy()
    which = np.where(two, rng.integers(2, size=n), 0)
    masks = object_masks(scenes, torch.from_numpy(which))
    for i in np.nonzero(kind == 1)[0]:
        h, w = rng.integers(s // 4, s // 2 + 1, size=2)
        r, c = rng.integers(0, s - h + 1), rng.integers(0, s - w + 1)
        masks[i] = 0
        masks[i, 0, r : r + h, c : c + w] = 1
    masks[torch.from_numpy(kind == 2)] = 1
    return masks


def psnr_where(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """PSNR [B] in dB between images a and b [B, 3, H, W] in [-1, 1] over the pixels
    where `where` [B, 1, H, W] is true (on the [0, 1] scale, peak 1)."""
    err = ((a.float() - b.float()) / 2) ** 2 * where
    mse = err.flatten(1).sum(1) / (3 * where.flatten(1).sum(1)).clamp(min=1)
    return 10 * torch.log10(1 / mse.clamp(min=1e-10))


def latent_grid_mask(mask: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """Pixel mask [B, 1, S, S] -> [B, 1, S, S] float: 1 on every pixel of a regenerated
    latent cell (latent_mask, blown up to pixels), 0 on the kept cells. RePaint's
    final latent is the source's on the kept cells and generated on the others, so the
    boundary between the two lies on this 8-pixel grid, not on the pixel mask."""
    if mask.shape[-1] % factor or mask.shape[-2] % factor:
        raise ValueError(
            f"mask size {tuple(mask.shape[-2:])} is not a multiple of "
            f"the latent factor {factor}"
        )
    return F.interpolate(latent_mask(mask, factor), scale_factor=factor, mode="nearest")


def seam_band(mask: torch.Tensor, width: int = 2, factor: int = 8) -> torch.Tensor:
    """The seam [B, 1, H, W] (bool): the pixels within `width` pixels of the boundary
    between kept and regenerated latent cells (latent_grid_mask), on both sides, and
    outside the pixel mask, where the edited image should still be the source. Here
    the source's latent and the generated one meet in the decoded image."""
    regen = latent_grid_mask(mask, factor)
    k = 2 * width + 1
    near_regen = F.max_pool2d(regen, k, stride=1, padding=width) > 0.5
    near_kept = F.max_pool2d(1 - regen, k, stride=1, padding=width) > 0.5
    return near_regen & near_kept & (mask < 0.5)


def edit_labels(objects, which, seed: int = 0):
    """Labels of the edited scenes: object which[i] of scene i gets another shape and
    another colour (size and place kept), chosen uniformly among the compositions the
    models were trained on (no held-out pair)."""
    rng = np.random.default_rng(seed)
    new = objects.clone()
    for i, k in enumerate(torch.as_tensor(which).tolist()):
        shape, colour = int(objects[i, k, 0]), int(objects[i, k, 1])
        for _ in range(100):
            shapes = [x for x in range(len(SHAPES)) if x != shape]
            colours = [x for x in range(len(COLOURS)) if x != colour]
            new[i, k, 0], new[i, k, 1] = (
                int(rng.choice(shapes)),
                int(rng.choice(colours)),
            )
            pair, pairing = scene_held_out(new[i : i + 1])
            if not (pair[0] or pairing[0]):
                break
    return new


def edited_object_right(verdict, objects, which, mask) -> torch.Tensor:
    """bool [B]: the image is clean, and an object whose centre lies inside the mask
    has the shape, colour and size asked for object which[i] (objects [B, 2, 3])."""
    s = mask.shape[-1]
    out = torch.zeros(len(objects), dtype=torch.bool)
    for i, k in enumerate(torch.as_tensor(which).tolist()):
        if not verdict.valid[i]:
            continue
        for j in range(2):
            row, col = verdict.centres[i, j].tolist()
            if row != row:  # NaN: no object j
                continue
            r, c = min(int(row * s), s - 1), min(int(col * s), s - 1)
            inside = mask[i, 0, r, c] > 0.5
            if inside and torch.equal(verdict.objects[i, j], objects[i, k]):
                out[i] = True
    return out

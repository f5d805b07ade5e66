"""End-to-end generation: from a prompt to an image.

Part I's pipeline is a label-conditional pixel-space diffusion model on 16x16 captioned
shapes: caption -> labels (data.parse_caption) -> guided DDIM/DDPM sampling
(samplers.sample). Later parts add text -> latent diffusion -> VAE decode (Stable
Diffusion) and text -> prior -> decoder -> upsampler (unCLIP).
"""

from __future__ import annotations

import torch

from .data import parse_caption
from .samplers import sample

IMAGE_SIZE = 16


def check_labels(labels: torch.Tensor, label_sizes: tuple) -> None:
    """Raise ValueError unless labels is an integer [N, K] prompt with labels[:, k] in
    [0, label_sizes[k]). (The null index label_sizes[k] is for guidance only.)"""
    k = len(label_sizes)
    if not torch.is_tensor(labels) or labels.ndim != 2 or labels.shape[1] != k:
        got = tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__
        raise ValueError(f"labels must be an integer tensor [N, {k}], got {got}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise ValueError(f"labels must be integers (torch.long), got {labels.dtype}")
    sizes = torch.tensor(label_sizes, device=labels.device)
    bad = (labels < 0) | (labels >= sizes)
    if bool(bad.any()):
        row, col = (int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(
            f"labels[{row}, {col}] = {int(labels[row, col])} is not a class: attribute "
            f"{col} needs a value in [0, {label_sizes[col]}) (the index "
            f"{label_sizes[col]} is the null label that guidance uses, not a prompt)"
        )


def _in_chunks(model, rows: int):
    """model(x, t, **kwargs) run on at most `rows` rows at a time, outputs concatenated.

    Rows do not interact in an eval-mode UNet, so the result does not depend on `rows`.
    """

    def run(x, t, **kwargs):
        outs = []
        for i in range(0, x.shape[0], rows):
            part = slice(i, i + rows)
            kw = {k: v[part] if torch.is_tensor(v) else v for k, v in kwargs.items()}
            outs.append(model(x[part], t[part], **kw))
        return torch.cat(outs)

    return run


def generate_shapes(
    model,
    schedule,
    labels,
    *,
    sampler="ddim",
    num_steps=50,
    guidance_scale=3.0,
    prediction_type="eps",
    eta=0.0,
    seed=0,
    batch_size=250,
    progress=False,
):
    """Images [N, 3, 16, 16] for label prompts [N, 4] (integers, labels[:, k] in
    [0, model.config.label_sizes[k])), with classifier-free guidance. `eta` is DDIM's
    stochasticity (0 deterministic, 1 the DDPM variance; ignored by sampler="ddpm").

    All N images are sampled as one batch, so the random numbers depend only on `seed`
    and N: x_T [N, 3, 16, 16] is drawn first from a generator seeded with `seed`, then
    (DDPM only) one [N, 3, 16, 16] noise tensor per step. `batch_size` only caps how
    many prompts one forward pass of the network sees (2 x batch_size rows with
    guidance: each prompt and its null label), to bound memory; the images do not
    depend on it (up to float rounding).
    """
    check_labels(labels, model.config.label_sizes)
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    device = next(model.parameters()).device
    labels = labels.to(device)
    rows = batch_size * (2 if guidance_scale != 1.0 else 1)
    return sample(
        _in_chunks(model, rows),
        schedule,
        (labels.shape[0], 3, IMAGE_SIZE, IMAGE_SIZE),
        sampler=sampler,
        num_steps=num_steps,
        eta=eta,
        model_kwargs={"labels": labels},
        uncond_kwargs={"labels": model.null_labels(labels.shape[0], device)},
        guidance_scale=guidance_scale,
        prediction_type=prediction_type,
        generator=torch.Generator().manual_seed(seed),
        device=device,
        progress=progress,
    ).cpu()


def generate_from_captions(model, schedule, captions: list, **kwargs) -> torch.Tensor:
    """Images [N, 3, 16, 16] for English captions such as "a large red circle in the top
    left"."""
    labels = torch.stack([parse_caption(c) for c in captions])
    return generate_shapes(model, schedule, labels, **kwargs)

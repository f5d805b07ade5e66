"""End-to-end generation: from a prompt to an image.

Part I's pipeline is a label-conditional pixel-space diffusion model on 16x16 captioned shapes:
caption -> labels (data.parse_caption) -> guided DDIM/DDPM sampling (samplers.sample). Later parts
add text -> latent diffusion -> VAE decode (Stable Diffusion) and text -> prior -> decoder -> upsampler (unCLIP).
"""
from __future__ import annotations

import torch

from .data import parse_caption
from .samplers import sample

IMAGE_SIZE = 16


def generate_shapes(model, schedule, labels, *, sampler="ddim", num_steps=50, guidance_scale=3.0,
                    prediction_type="eps", seed=0, batch_size=250, progress=False):
    """Images [N, 3, 16, 16] for label prompts [N, 4], with classifier-free guidance."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    out = []
    for chunk in labels.split(batch_size):
        chunk = chunk.to(device)
        out.append(sample(model, schedule, (chunk.shape[0], 3, IMAGE_SIZE, IMAGE_SIZE), sampler=sampler,
                          num_steps=num_steps, model_kwargs={"labels": chunk},
                          uncond_kwargs={"labels": model.null_labels(chunk.shape[0], device)},
                          guidance_scale=guidance_scale, prediction_type=prediction_type, generator=gen,
                          progress=progress).cpu())
    return torch.cat(out)


def generate_from_captions(model, schedule, captions: list, **kwargs) -> torch.Tensor:
    """Images [N, 3, 16, 16] for English captions such as "a large red circle in the top left"."""
    labels = torch.stack([parse_caption(c) for c in captions])
    return generate_shapes(model, schedule, labels, **kwargs)

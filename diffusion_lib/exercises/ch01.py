"""Exercises of chapter 1 (registered with diffusion_lib.exercises)."""

from __future__ import annotations

import math

import torch

from ..data import ATTRIBUTES, caption_from_labels, parse_caption, sample_labels
from . import register


def _uint8_images(gen: torch.Generator) -> dict:
    shape = (int(torch.randint(1, 5, (1,), generator=gen)), 3, 8, 8)
    return {"images": torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)}


def to_model_space(images: torch.Tensor) -> torch.Tensor:
    """uint8 images [B, C, H, W] in [0, 255] -> float32 in [-1, 1] (0 -> -1,
    255 -> 1)."""
    return images.float() / 127.5 - 1


register(
    "ch01.to_model_space",
    to_model_space,
    _uint8_images,
    atol=1e-6,
    hint="divide by 127.5 and subtract 1, after converting the uint8 tensor to float",
)


def _mix_inputs(gen: torch.Generator) -> dict:
    shape = (int(torch.randint(1, 5, (1,), generator=gen)), 3, 8, 8)
    return {
        "x": torch.rand(shape, generator=gen) * 2 - 1,
        "eps": torch.randn(shape, generator=gen),
        "a": float(torch.rand((), generator=gen)) * 0.98 + 0.01,
    }


def vp_mix(x: torch.Tensor, eps: torch.Tensor, a: float) -> torch.Tensor:
    """The variance-preserving mix sqrt(a) x + sqrt(1 - a) eps, for a float a in
    (0, 1)."""
    return math.sqrt(a) * x + math.sqrt(1 - a) * eps


register(
    "ch01.vp_mix",
    vp_mix,
    _mix_inputs,
    hint="both weights are square roots: sqrt(a) on the image, sqrt(1 - a) on the "
    "noise",
)


def _step_inputs(gen: torch.Generator) -> dict:
    shape = (int(torch.randint(1, 5, (1,), generator=gen)), 3, 8, 8)
    a_t = float(torch.rand((), generator=gen)) * 0.9 + 0.05
    a_prev = a_t + (1 - a_t) * float(
        torch.rand((), generator=gen)
    )  # less noise: a_prev > a_t
    return {
        "x_t": torch.randn(shape, generator=gen),
        "eps_hat": torch.randn(shape, generator=gen),
        "a_t": a_t,
        "a_prev": a_prev,
    }


def denoise_step(
    x_t: torch.Tensor, eps_hat: torch.Tensor, a_t: float, a_prev: float
) -> torch.Tensor:
    """One deterministic step of the generate loop: x0 implied by eps_hat, then
    re-noised to level a_prev."""
    x0_hat = (x_t - math.sqrt(1 - a_t) * eps_hat) / math.sqrt(a_t)
    return math.sqrt(a_prev) * x0_hat + math.sqrt(1 - a_prev) * eps_hat


register(
    "ch01.denoise_step",
    denoise_step,
    _step_inputs,
    atol=1e-4,
    hint="first solve x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps_hat for x0, then mix x0 "
    "and eps_hat with a_prev",
)


def _caption_inputs(gen: torch.Generator) -> dict:
    seed = int(torch.randint(0, 10_000, (1,), generator=gen))
    labels = sample_labels(1, seed=seed, split="all")[0]
    return {
        "caption": caption_from_labels(
            labels, template=int(torch.randint(0, 4, (1,), generator=gen))
        )
    }


def caption_to_labels(caption: str) -> torch.Tensor:
    """The label vector [4] (shape, colour, size, position indices into
    data.ATTRIBUTES) of a caption."""
    return parse_caption(caption)


register(
    "ch01.caption_to_labels",
    caption_to_labels,
    _caption_inputs,
    hint=f"for each attribute of data.ATTRIBUTES ({', '.join(ATTRIBUTES)}), find which "
    "of its values appears in the caption; return the four indices as a torch.long "
    "tensor",
)

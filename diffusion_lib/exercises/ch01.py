"""Exercises of chapter 1 (registered with diffusion_lib.exercises)."""

from __future__ import annotations

import math

import torch

from ..data import ATTRIBUTES, caption_from_labels, parse_caption, sample_labels
from .base import register


def _uint8_images(gen: torch.Generator) -> dict:
    shape = (int(torch.randint(1, 5, (1,), generator=gen)), 3, 8, 8)
    return {"images": torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)}


def to_model_space(images: torch.Tensor) -> torch.Tensor:
    """uint8 images [B, C, H, W] in [0, 255] -> float32 in [-1, 1] (0 -> -1,
    255 -> 1)."""
    return images.float() / 127.5 - 1


def _mistake_to_model_space_unit_range(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255  # [0, 1], not [-1, 1]


def _mistake_to_model_space_divides_by_128(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 128 - 1  # 255 -> 0.992, not 1


register(
    "ch01.to_model_space",
    to_model_space,
    _uint8_images,
    atol=1e-6,
    hint="divide by 127.5 and subtract 1, after converting the uint8 tensor to float",
    mistakes={
        "divides by 255 only, giving [0, 1] instead of [-1, 1]": (
            _mistake_to_model_space_unit_range
        ),
        "divides by 128 instead of 127.5": _mistake_to_model_space_divides_by_128,
    },
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


def _mistake_vp_mix_no_sqrt(
    x: torch.Tensor, eps: torch.Tensor, a: float
) -> torch.Tensor:
    return a * x + (1 - a) * eps


def _mistake_vp_mix_swapped(
    x: torch.Tensor, eps: torch.Tensor, a: float
) -> torch.Tensor:
    return math.sqrt(1 - a) * x + math.sqrt(a) * eps


register(
    "ch01.vp_mix",
    vp_mix,
    _mix_inputs,
    hint="both weights are square roots: sqrt(a) on the image, sqrt(1 - a) on the "
    "noise",
    mistakes={
        "forgets the square roots (a x + (1 - a) eps)": _mistake_vp_mix_no_sqrt,
        "swaps the weights: sqrt(1 - a) on the image, sqrt(a) on the noise": (
            _mistake_vp_mix_swapped
        ),
    },
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


def _mistake_denoise_step_no_division(
    x_t: torch.Tensor, eps_hat: torch.Tensor, a_t: float, a_prev: float
) -> torch.Tensor:
    x0_hat = x_t - math.sqrt(1 - a_t) * eps_hat  # forgot "/ sqrt(a_t)"
    return math.sqrt(a_prev) * x0_hat + math.sqrt(1 - a_prev) * eps_hat


def _mistake_denoise_step_renoise_to_a_t(
    x_t: torch.Tensor, eps_hat: torch.Tensor, a_t: float, a_prev: float
) -> torch.Tensor:
    x0_hat = (x_t - math.sqrt(1 - a_t) * eps_hat) / math.sqrt(a_t)
    return math.sqrt(a_t) * x0_hat + math.sqrt(1 - a_t) * eps_hat  # a_t, not a_prev


register(
    "ch01.denoise_step",
    denoise_step,
    _step_inputs,
    atol=1e-4,
    hint="first solve x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps_hat for x0, then mix x0 "
    "and eps_hat with a_prev",
    mistakes={
        "forgets to divide by sqrt(a_t) when solving for x0": (
            _mistake_denoise_step_no_division
        ),
        "re-noises to the current level a_t instead of a_prev (returns x_t)": (
            _mistake_denoise_step_renoise_to_a_t
        ),
    },
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


def _mistake_caption_to_labels_list(caption: str) -> list:
    return parse_caption(caption).tolist()  # a Python list, not a tensor


def _mistake_caption_to_labels_float(caption: str) -> torch.Tensor:
    return torch.tensor(parse_caption(caption).tolist(), dtype=torch.float32)


register(
    "ch01.caption_to_labels",
    caption_to_labels,
    _caption_inputs,
    hint=f"for each attribute of data.ATTRIBUTES ({', '.join(ATTRIBUTES)}), find which "
    "of its values appears in the caption; return the four indices as a torch.long "
    "tensor",
    mistakes={
        "returns a Python list instead of a tensor": _mistake_caption_to_labels_list,
        "returns float indices instead of torch.long": (
            _mistake_caption_to_labels_float
        ),
    },
)

"""Exercises of chapter 8 (registered with diffusion_lib.exercises)."""

from __future__ import annotations

import math

import torch

from ..metrics import diversity
from ..unet import attention_probabilities
from .base import register

# ch08.cross_attention_probs: queries [B, heads, N, d] (one per latent position),
# keys [B, heads, L, d] (one per text token) -> softmax(q k^T / sqrt(d)),
# [B, heads, N, L]


def reference_cross_attention_probs(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return attention_probabilities(q, k)


def _probs_inputs(gen: torch.Generator) -> dict:
    b, h, n, length, d = (
        int(torch.randint(1, m, (), generator=gen)) for m in (4, 5, 65, 21, 33)
    )
    return {
        "q": torch.randn(b, h, n, d, generator=gen),
        "k": torch.randn(b, h, length, d, generator=gen),
    }


def _mistake_cross_attention_probs_query_axis(q, k) -> torch.Tensor:
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return scores.softmax(dim=-2)  # over the latent positions, not the tokens


def _mistake_cross_attention_probs_unscaled(q, k) -> torch.Tensor:
    return (q @ k.transpose(-1, -2)).softmax(dim=-1)  # forgot / sqrt(d)


register(
    "ch08.cross_attention_probs",
    reference_cross_attention_probs,
    _probs_inputs,
    hint="scores = q @ k.transpose(-1, -2) / sqrt(d), with d = q.shape[-1] (the "
    "size of one head); the softmax runs over the last axis (the text tokens), so "
    "that each latent position's weights sum to 1.",
    mistakes={
        "takes the softmax over the queries (dim -2) instead of the keys": (
            _mistake_cross_attention_probs_query_axis
        ),
        "forgets to divide the scores by sqrt(d)": (
            _mistake_cross_attention_probs_unscaled
        ),
    },
)


# ch08.word_heatmap: probabilities [B, heads, N, L] of one cross-attention layer
# (N = size * size positions, row-major), a token index -> the head-averaged attention
# of every position on that token, [B, size, size]


def reference_word_heatmap(probs: torch.Tensor, token: int) -> torch.Tensor:
    size = math.isqrt(probs.shape[2])
    return probs[..., token].mean(dim=1).unflatten(-1, (size, size))


def _heatmap_inputs(gen: torch.Generator) -> dict:
    b, h, size, length = (
        int(torch.randint(1, m, (), generator=gen)) for m in (4, 5, 9, 21)
    )
    logits = torch.randn(b, h, size * size, length, generator=gen)
    token = int(torch.randint(0, length, (), generator=gen))
    return {"probs": logits.softmax(-1), "token": token}


def _mistake_word_heatmap_sum_heads(probs: torch.Tensor, token: int) -> torch.Tensor:
    size = math.isqrt(probs.shape[2])
    return probs[..., token].sum(dim=1).unflatten(-1, (size, size))


def _mistake_word_heatmap_transposed(probs: torch.Tensor, token: int):
    size = math.isqrt(probs.shape[2])
    heat = probs[..., token].mean(dim=1).unflatten(-1, (size, size))
    return heat.transpose(-1, -2)  # column-major: the grid's x and y swapped


register(
    "ch08.word_heatmap",
    reference_word_heatmap,
    _heatmap_inputs,
    hint="take the token's column (probs[..., token]: [B, heads, N]), average over "
    "the heads (dim 1), and reshape N into (size, size) with size = sqrt(N); "
    "positions are row-major, so unflatten(-1, (size, size)) restores the grid.",
    mistakes={
        "sums over the heads instead of averaging": _mistake_word_heatmap_sum_heads,
        "restores the grid column-major (transposed)": (
            _mistake_word_heatmap_transposed
        ),
    },
)


# ch08.guided_ddim_step: one deterministic DDIM step (eta = 0) of classifier-free
# guidance on latents: z_t, the two noise predictions, the guidance scale and the
# alphas_cumprod of t and t_prev -> z_{t_prev}


def reference_guided_ddim_step(
    z_t, eps_cond, eps_uncond, guidance_scale, alpha_bar_t, alpha_bar_prev
):
    eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
    z0_hat = (z_t - (1 - alpha_bar_t) ** 0.5 * eps) / alpha_bar_t**0.5
    return alpha_bar_prev**0.5 * z0_hat + (1 - alpha_bar_prev) ** 0.5 * eps


def _step_inputs(gen: torch.Generator) -> dict:
    b = int(torch.randint(1, 5, (), generator=gen))
    a_t = float(torch.rand((), generator=gen)) * 0.9 + 0.05
    a_prev = a_t + (1 - a_t) * float(torch.rand((), generator=gen)) * 0.9
    z = [torch.randn(b, 4, 8, 8, generator=gen) for _ in range(3)]
    scale = float(torch.rand((), generator=gen)) * 7 + 1
    return {
        "z_t": z[0],
        "eps_cond": z[1],
        "eps_uncond": z[2],
        "guidance_scale": scale,
        "alpha_bar_t": a_t,
        "alpha_bar_prev": a_prev,
    }


def _mistake_guided_ddim_step_clipped(
    z_t, eps_cond, eps_uncond, guidance_scale, alpha_bar_t, alpha_bar_prev
):
    eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
    z0_hat = (z_t - (1 - alpha_bar_t) ** 0.5 * eps) / alpha_bar_t**0.5
    z0_hat = z0_hat.clamp(-1, 1)  # right for pixels, wrong for latents
    return alpha_bar_prev**0.5 * z0_hat + (1 - alpha_bar_prev) ** 0.5 * eps


def _mistake_guided_ddim_step_swapped(
    z_t, eps_cond, eps_uncond, guidance_scale, alpha_bar_t, alpha_bar_prev
):
    eps = eps_cond + guidance_scale * (eps_uncond - eps_cond)
    z0_hat = (z_t - (1 - alpha_bar_t) ** 0.5 * eps) / alpha_bar_t**0.5
    return alpha_bar_prev**0.5 * z0_hat + (1 - alpha_bar_prev) ** 0.5 * eps


register(
    "ch08.guided_ddim_step",
    reference_guided_ddim_step,
    _step_inputs,
    hint="three lines: eps = eps_uncond + s (eps_cond - eps_uncond); z0 = (z_t - "
    "sqrt(1 - a_t) eps) / sqrt(a_t); z_prev = sqrt(a_prev) z0 + sqrt(1 - a_prev) eps. "
    "Latents are not clipped (they are not in [-1, 1]).",
    mistakes={
        "clips z0_hat to [-1, 1], as for pixels": _mistake_guided_ddim_step_clipped,
        "swaps the conditional and the unconditional noise in the guidance": (
            _mistake_guided_ddim_step_swapped
        ),
    },
)


# ch08.diversity: images [P * k, 3, H, W] in [-1, 1], grouped by prompt (k images of
# each of P prompts, consecutive) -> the mean over prompts and pixels of the standard
# deviation across each prompt's k images, on the [0, 1] scale (a Python float)


def reference_diversity(images: torch.Tensor, per_prompt: int) -> float:
    return diversity(images, per_prompt)


def _diversity_inputs(gen: torch.Generator) -> dict:
    p, k = (int(torch.randint(1, m, (), generator=gen)) for m in (5, 6))
    k += 1  # at least two images per prompt
    images = torch.rand(p * k, 3, 8, 8, generator=gen) * 2 - 1
    return {"images": images, "per_prompt": k}


def _mistake_diversity_biased_std(images: torch.Tensor, per_prompt: int) -> float:
    x = (images + 1) / 2
    return x.unflatten(0, (-1, per_prompt)).std(dim=1, unbiased=False).mean().item()


def _mistake_diversity_pm1_scale(images: torch.Tensor, per_prompt: int) -> float:
    # on the [-1, 1] scale: twice too large
    return images.unflatten(0, (-1, per_prompt)).std(dim=1).mean().item()


register(
    "ch08.diversity",
    reference_diversity,
    _diversity_inputs,
    hint="map to [0, 1] with (x + 1) / 2, group with unflatten(0, (-1, per_prompt)), "
    "take .std(dim=1) (the unbiased standard deviation, torch's default) across each "
    "prompt's images, then the mean of everything; return .item().",
    mistakes={
        "uses the biased standard deviation (unbiased=False)": (
            _mistake_diversity_biased_std
        ),
        "measures on the [-1, 1] scale (forgets (x + 1) / 2)": (
            _mistake_diversity_pm1_scale
        ),
    },
)

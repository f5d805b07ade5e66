"""Exercises of chapter 9 (registered with diffusion_lib.exercises)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..pipelines import slerp
from ..prior import pick_closest
from .base import register

# ch09.prior_mask: text_mask bool [B, L] (True at real caption tokens) and the number
# of tokens that follow the caption (extra) -> the prior's attention mask
# bool [B, L + extra, L + extra]: query i may attend to key j when j <= i (causal) and
# key j is not caption padding


def reference_prior_mask(text_mask: torch.Tensor, extra: int) -> torch.Tensor:
    b, n = text_mask.shape[0], text_mask.shape[1] + extra
    keys = torch.cat([text_mask, text_mask.new_ones(b, extra)], dim=1)  # [B, N]
    causal = torch.ones(n, n, dtype=torch.bool, device=text_mask.device).tril()
    return causal[None] & keys[:, None, :]


def _mask_inputs(gen: torch.Generator) -> dict:
    b, length = (int(torch.randint(1, m, (), generator=gen)) for m in (5, 21))
    lengths = torch.randint(1, length + 1, (b,), generator=gen)
    mask = torch.arange(length)[None] < lengths[:, None]
    return {"text_mask": mask, "extra": int(torch.randint(1, 6, (), generator=gen))}


def _mistake_prior_mask_no_padding(text_mask, extra) -> torch.Tensor:
    b, n = text_mask.shape[0], text_mask.shape[1] + extra
    return torch.ones(n, n, dtype=torch.bool).tril().expand(b, n, n).clone()


def _mistake_prior_mask_future(text_mask, extra) -> torch.Tensor:
    b, n = text_mask.shape[0], text_mask.shape[1] + extra
    keys = torch.cat([text_mask, text_mask.new_ones(b, extra)], dim=1)
    causal = torch.ones(n, n, dtype=torch.bool).triu()  # the future, not the past
    return causal[None] & keys[:, None, :]


register(
    "ch09.prior_mask",
    reference_prior_mask,
    _mask_inputs,
    hint="start from the lower-triangular causal mask torch.ones(N, N).tril().bool() "
    "(query i sees keys 0..i); a key is also hidden when it is caption padding: "
    "extend text_mask with `extra` True values and combine with "
    "causal[None] & keys[:, None, :].",
    mistakes={
        "lets every token attend to the caption's padding": (
            _mistake_prior_mask_no_padding
        ),
        "uses an upper-triangular mask (each token sees the future)": (
            _mistake_prior_mask_future
        ),
    },
)


# ch09.pick_closest: candidates [k, B, D] (k unit image embeddings per caption) and
# text_embed [B, D] -> [B, D], per caption the candidate with the highest dot product
# with its text embedding


def reference_pick_closest(candidates, text_embed) -> torch.Tensor:
    return pick_closest(candidates, text_embed)


def _pick_inputs(gen: torch.Generator) -> dict:
    k, b, d = (int(torch.randint(2, m, (), generator=gen)) for m in (5, 7, 17))
    cands = F.normalize(torch.randn(k, b, d, generator=gen), dim=-1)
    return {
        "candidates": cands,
        "text_embed": F.normalize(torch.randn(b, d, generator=gen), dim=-1),
    }


def _mistake_pick_farthest(candidates, text_embed) -> torch.Tensor:
    scores = torch.einsum("kbd,bd->kb", candidates, text_embed)
    return candidates[scores.argmin(0), torch.arange(candidates.shape[1])]


def _mistake_pick_one_for_all(candidates, text_embed) -> torch.Tensor:
    scores = torch.einsum("kbd,bd->kb", candidates, text_embed)
    best = int(scores.sum(1).argmax())  # one candidate index for the whole batch
    return candidates[best]


register(
    "ch09.pick_closest",
    reference_pick_closest,
    _pick_inputs,
    hint="scores = torch.einsum('kbd,bd->kb', candidates, text_embed) (one score per "
    "candidate and caption); the best index per caption is scores.argmax(dim=0), and "
    "candidates[best, torch.arange(B)] gathers one row per caption.",
    mistakes={
        "keeps the candidate farthest from the text (argmin)": _mistake_pick_farthest,
        "keeps the same candidate index for every caption": _mistake_pick_one_for_all,
    },
)


# ch09.slerp: unit vectors a, b [B, D] and a weight in [0, 1] -> the spherical
# interpolation sin((1 - w) theta) / sin(theta) a + sin(w theta) / sin(theta) b


def reference_slerp(a, b, weight) -> torch.Tensor:
    return slerp(a, b, weight)


def _slerp_inputs(gen: torch.Generator) -> dict:
    b, d = (int(torch.randint(1, m, (), generator=gen)) for m in (5, 17))
    d = max(d, 2)
    a = F.normalize(torch.randn(b, d, generator=gen), dim=-1)
    other = F.normalize(torch.randn(b, d, generator=gen), dim=-1)
    # at (anti)parallel pairs sin(theta) -> 0 and two correct answers part by more than
    # the tolerance (how each clamps the cosine): not what the exercise is about, so
    # such a pair's b becomes (-a_1, a_0, 0, ...), orthogonal to a (mostly at d = 2)
    near = (a * other).sum(-1).abs() > 0.95
    perpendicular = torch.zeros_like(a)
    perpendicular[:, 0], perpendicular[:, 1] = -a[:, 1], a[:, 0]
    other = torch.where(near[:, None], F.normalize(perpendicular, dim=-1), other)
    return {
        "a": a,
        "b": other,
        "weight": float(torch.rand((), generator=gen)) * 0.8 + 0.1,
    }


def _mistake_slerp_lerp(a, b, weight) -> torch.Tensor:
    return (1 - weight) * a + weight * b  # leaves the sphere


def _mistake_slerp_swapped(a, b, weight) -> torch.Tensor:
    theta = torch.arccos((a * b).sum(-1, keepdim=True).clamp(-1, 1))
    return (torch.sin(weight * theta) * a + torch.sin((1 - weight) * theta) * b) / (
        torch.sin(theta)
    )  # weight 0 gives b, not a


register(
    "ch09.slerp",
    reference_slerp,
    _slerp_inputs,
    atol=1e-4,
    hint="theta = arccos(<a, b>) per row (keepdim=True, clamp to [-1, 1]); then "
    "(sin((1 - w) theta) a + sin(w theta) b) / sin(theta): weight 0 gives a, 1 gives "
    "b, and every result has length 1.",
    mistakes={
        "interpolates linearly (the result leaves the unit sphere)": (
            _mistake_slerp_lerp
        ),
        "swaps the two weights (weight 0 gives b)": _mistake_slerp_swapped,
    },
)

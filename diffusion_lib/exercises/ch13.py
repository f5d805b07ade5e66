"""Exercises of chapter 13 (registered with diffusion_lib.exercises)."""

from __future__ import annotations

import torch

from .base import register

# ch13.controlled_skips: the frozen UNet's skips (a list of [B, C_i, H_i, W_i]), the
# ControlNet's residuals (the same shapes) and a strength -> the skips the decoder
# reads: skip_i + scale * residual_i


def reference_controlled_skips(skips, residuals, scale) -> list:
    return [s + scale * r for s, r in zip(skips, residuals)]


def _skips_inputs(gen: torch.Generator) -> dict:
    b = int(torch.randint(1, 3, (), generator=gen))
    shapes = [(8, 8, 8), (8, 4, 4), (16, 4, 4), (16, 2, 2)]
    return {
        "skips": [torch.randn(b, *s, generator=gen) for s in shapes],
        "residuals": [torch.randn(b, *s, generator=gen) for s in shapes],
        "scale": float(torch.rand((), generator=gen)) * 1.5 + 0.25,
    }


def _mistake_skips_replace(skips, residuals, scale) -> list:
    return [scale * r for r in residuals]  # drops the frozen UNet's own features


def _mistake_skips_reversed(skips, residuals, scale) -> list:
    return [s + scale * r for s, r in zip(skips, reversed(residuals))]


register(
    "ch13.controlled_skips",
    reference_controlled_skips,
    _skips_inputs,
    hint="ControlNet adds: each skip keeps the frozen UNet's features and gains "
    "scale * the residual of the same position in the list.",
    mistakes={
        "replaces the skips by the residuals": _mistake_skips_replace,
        "pairs the residuals with the wrong skips": _mistake_skips_reversed,
    },
)


# ch13.mask_iou: drawn, asked bool [B, H, W] -> IoU [B] = |drawn & asked| /
# |drawn | asked|, 1 where both are empty


def reference_mask_iou(drawn, asked) -> torch.Tensor:
    inter = (drawn & asked).flatten(1).sum(1).float()
    union = (drawn | asked).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def _iou_inputs(gen: torch.Generator) -> dict:
    b = int(torch.randint(2, 5, (), generator=gen))
    drawn = torch.rand(b, 12, 12, generator=gen) < 0.3
    asked = torch.rand(b, 12, 12, generator=gen) < 0.3
    drawn[0], asked[0] = False, False  # an empty scene: IoU 1 by convention
    return {"drawn": drawn, "asked": asked}


def _mistake_iou_recall(drawn, asked) -> torch.Tensor:
    inter = (drawn & asked).flatten(1).sum(1).float()
    return inter / asked.flatten(1).sum(1).float().clamp(min=1)


def _mistake_iou_empty(drawn, asked) -> torch.Tensor:
    inter = (drawn & asked).flatten(1).sum(1).float()
    return inter / (drawn | asked).flatten(1).sum(1).float()  # 0 / 0 = NaN


register(
    "ch13.mask_iou",
    reference_mask_iou,
    _iou_inputs,
    hint="count per image (flatten(1).sum(1)) the pixels in both masks and in either; "
    "divide; where the union is empty the two masks agree perfectly: IoU 1 "
    "(torch.where).",
    mistakes={
        "divides by the asked mask (recall), not the union": _mistake_iou_recall,
        "returns NaN for two empty masks": _mistake_iou_empty,
    },
)


# ch13.converged_at: steps [K] (increasing) and a metric measured at each [K], a
# threshold -> the first step from which the metric stays >= threshold until the end
# (-1 if it never does): when a "sudden convergence" happened


def reference_converged_at(steps, values, threshold) -> torch.Tensor:
    above = values >= threshold
    for i in range(len(steps)):
        if bool(above[i:].all()):
            return steps[i].clone()
    return torch.tensor(-1)


def _converge_inputs(gen: torch.Generator) -> dict:
    k = int(torch.randint(6, 14, (), generator=gen))
    jump = int(torch.randint(1, k - 1, (), generator=gen))
    values = torch.rand(k, generator=gen) * 0.3 + 0.3
    values[jump:] += 0.45
    blip = int(torch.randint(0, jump, (), generator=gen))
    values[blip] = 0.95  # one early value above the threshold, then back down
    return {"steps": torch.arange(1, k + 1) * 250, "values": values, "threshold": 0.9}


def _mistake_converged_first(steps, values, threshold) -> torch.Tensor:
    above = (values >= threshold).nonzero()
    return steps[above[0, 0]].clone() if len(above) else torch.tensor(-1)


def _mistake_converged_last_below(steps, values, threshold) -> torch.Tensor:
    below = (values < threshold).nonzero()
    return steps[below[-1, 0]].clone() if len(below) else steps[0].clone()


register(
    "ch13.converged_at",
    reference_converged_at,
    _converge_inputs,
    hint="a single early value above the threshold is not convergence: look for the "
    "first index i such that values[i:] are all >= threshold.",
    mistakes={
        "returns the first step above the threshold, even if it drops again": (
            _mistake_converged_first
        ),
        "returns the last step *below* the threshold": _mistake_converged_last_below,
    },
)

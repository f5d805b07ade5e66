"""Exercises of chapter 10 (registered with diffusion_lib.exercises)."""

from __future__ import annotations

import torch

from .base import register

# ch10.conv_flops: FLOPs of one 2-D convolution (k x k kernel, stride 1, "same"
# padding, with bias ignored) on an [B, c_in, h, w] input with c_out output channels,
# counted as FlopCounterMode counts them: 2 per multiply-add


def reference_conv_flops(batch, c_in, c_out, k, h, w) -> torch.Tensor:
    return torch.tensor(2 * batch * c_in * c_out * k * k * h * w, dtype=torch.float64)


def _conv_inputs(gen: torch.Generator) -> dict:
    draw = lambda lo, hi: int(torch.randint(lo, hi, (), generator=gen))  # noqa: E731
    return {
        "batch": draw(1, 9),
        "c_in": draw(1, 513),
        "c_out": draw(1, 513),
        "k": [1, 3, 5][draw(0, 3)],
        "h": draw(4, 65),
        "w": draw(4, 65),
    }


def _mistake_conv_flops_macs(batch, c_in, c_out, k, h, w):
    return torch.tensor(batch * c_in * c_out * k * k * h * w, dtype=torch.float64)


def _mistake_conv_flops_one_k(batch, c_in, c_out, k, h, w):
    return torch.tensor(2 * batch * c_in * c_out * k * h * w, dtype=torch.float64)


register(
    "ch10.conv_flops",
    reference_conv_flops,
    _conv_inputs,
    atol=0.5,
    hint="every output value (batch * c_out * h * w of them) is a sum of c_in * k * k "
    "products; FlopCounterMode counts a multiply-add as 2 FLOPs. Return a float64 "
    "tensor: torch.tensor(value, dtype=torch.float64).",
    mistakes={
        "counts multiply-adds, not FLOPs (a factor 2 too small)": (
            _mistake_conv_flops_macs
        ),
        "counts a k x k kernel as k weights": _mistake_conv_flops_one_k,
    },
)


# ch10.binding_outcome: found [2, 2] (shape, colour) of the two objects the judge found
# and asked [2, 2] of the prompt's (two different shapes, two different colours) ->
# tensor(0) bound right, tensor(1) colours swapped between the shapes, tensor(2) else;
# the order of the objects does not matter


def reference_binding_outcome(found, asked) -> torch.Tensor:
    f = sorted(map(tuple, found.tolist()))
    (s0, c0), (s1, c1) = asked.tolist()
    if f == sorted([(s0, c0), (s1, c1)]):
        return torch.tensor(0)
    if f == sorted([(s0, c1), (s1, c0)]):
        return torch.tensor(1)
    return torch.tensor(2)


def _binding_inputs(gen: torch.Generator) -> dict:
    shapes = torch.randperm(3, generator=gen)[:2]
    colours, other = torch.randperm(6, generator=gen)[:3].split([2, 1])
    asked = torch.stack([shapes, colours], dim=1)  # [[s0, c0], [s1, c1]]
    case = int(torch.randint(0, 4, (), generator=gen))
    found = asked.clone()
    if case == 1:  # swapped colours
        found[:, 1] = colours.flip(0)
    elif case == 2:  # a colour the prompt did not ask for
        found[0, 1] = other[0]
    if int(torch.randint(0, 2, (), generator=gen)):
        found = found.flip(0)  # the judge's order, not the prompt's
    return {"found": found, "asked": asked}


def _mistake_binding_ordered(found, asked) -> torch.Tensor:
    if torch.equal(found, asked):
        return torch.tensor(0)
    swapped = torch.stack([asked[:, 0], asked[:, 1].flip(0)], dim=1)
    return torch.tensor(1 if torch.equal(found, swapped) else 2)


def _mistake_binding_shapes_only(found, asked) -> torch.Tensor:
    same = sorted(found[:, 0].tolist()) == sorted(asked[:, 0].tolist())
    return torch.tensor(0 if same else 2)


register(
    "ch10.binding_outcome",
    reference_binding_outcome,
    _binding_inputs,
    hint="compare the found (shape, colour) pairs with the asked ones as sets (sort "
    "the pairs: the judge lists objects in its own order); swapped means the pairs "
    "{(s0, c1), (s1, c0)}.",
    mistakes={
        "compares the objects in order (the judge's order is not the prompt's)": (
            _mistake_binding_ordered
        ),
        "checks the shapes and ignores which colour went where": (
            _mistake_binding_shapes_only
        ),
    },
)


# ch10.diversity_at: a guidance sweep's prompt accuracies [S] and diversities [S]
# (ordered by guidance scale) and a target accuracy -> the diversity at that accuracy,
# linearly interpolated between the first two neighbouring points that bracket it


def reference_diversity_at(
    accuracy: torch.Tensor, diversity: torch.Tensor, target: float
) -> torch.Tensor:
    for i in range(len(accuracy) - 1):
        a, b = float(accuracy[i]), float(accuracy[i + 1])
        if min(a, b) <= target <= max(a, b):
            w = 0.0 if a == b else (target - a) / (b - a)
            return diversity[i] + w * (diversity[i + 1] - diversity[i])
    return torch.tensor(float("nan"))


def _sweep_inputs(gen: torch.Generator) -> dict:
    s = int(torch.randint(3, 7, (), generator=gen))
    acc = torch.rand(s, generator=gen).sort().values * 0.6 + 0.35
    div = 0.05 - torch.rand(s, generator=gen).sort().values * 0.03
    target = float(acc[0] + (acc[-1] - acc[0]) * torch.rand((), generator=gen))
    return {"accuracy": acc, "diversity": div, "target": target}


def _mistake_diversity_nearest(accuracy, diversity, target) -> torch.Tensor:
    return diversity[(accuracy - target).abs().argmin()]


def _mistake_diversity_reversed(accuracy, diversity, target) -> torch.Tensor:
    for i in range(len(accuracy) - 1):
        a, b = float(accuracy[i]), float(accuracy[i + 1])
        if min(a, b) <= target <= max(a, b):
            w = 0.0 if a == b else (target - a) / (b - a)
            return diversity[i + 1] + w * (diversity[i] - diversity[i + 1])
    return torch.tensor(float("nan"))


register(
    "ch10.diversity_at",
    reference_diversity_at,
    _sweep_inputs,
    atol=1e-6,
    hint="find i with the target between accuracy[i] and accuracy[i + 1]; w = (target "
    "- accuracy[i]) / (accuracy[i + 1] - accuracy[i]); the answer is diversity[i] + "
    "w * (diversity[i + 1] - diversity[i]).",
    mistakes={
        "takes the diversity of the nearest point instead of interpolating": (
            _mistake_diversity_nearest
        ),
        "interpolates from the wrong end of the segment": _mistake_diversity_reversed,
    },
)

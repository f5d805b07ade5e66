"""Exercises of chapter 5 (registered with diffusion_lib.exercises)."""

from __future__ import annotations

import functools

import torch

from ..data import ATTRIBUTES, caption_from_labels, parse_caption
from ..samplers import cfg_combine, guided_model_output
from ..train import drop_labels
from ..unet import UNet, UNetConfig
from .base import register

# ch05.cfg_combine: eps_uncond + w (eps_cond - eps_uncond). Ho & Salimans (2022), Eq. 6
# write the same as (1 + w_paper) eps_cond - w_paper eps_uncond: our w = 1 + w_paper.


def reference_cfg_combine(
    eps_cond: torch.Tensor, eps_uncond: torch.Tensor, w: float
) -> torch.Tensor:
    return cfg_combine(eps_cond, eps_uncond, w)


def _cfg_inputs(gen: torch.Generator) -> dict:
    shape = (int(torch.randint(1, 5, (), generator=gen)), 3, 8, 8)
    return {
        "eps_cond": torch.randn(shape, generator=gen),
        "eps_uncond": torch.randn(shape, generator=gen),
        "w": round(float(torch.rand((), generator=gen)) * 8, 3),
    }


def _mistake_cfg_combine_swapped(eps_cond, eps_uncond, w: float) -> torch.Tensor:
    return eps_cond + w * (eps_uncond - eps_cond)


def _mistake_cfg_combine_paper_w(eps_cond, eps_uncond, w: float) -> torch.Tensor:
    return (1 + w) * eps_cond - w * eps_uncond  # the paper's formula with our w


register(
    "ch05.cfg_combine",
    reference_cfg_combine,
    _cfg_inputs,
    atol=1e-5,
    hint="w = 0 must give eps_uncond and w = 1 must give eps_cond. (This w is "
    "1 + w_paper, where Ho & Salimans' Eq. 6 reads (1 + w_paper) eps_cond - w_paper "
    "eps_uncond.)",
    mistakes={
        "swaps the roles: eps_cond + w (eps_uncond - eps_cond)": (
            _mistake_cfg_combine_swapped
        ),
        "plugs our w into the paper's (1 + w) eps_cond - w eps_uncond": (
            _mistake_cfg_combine_paper_w
        ),
    },
)


# ch05.drop_labels: keep a row where u >= p, else replace it by the null row (as
# train.drop_labels)


def drop_labels_given_u(
    labels: torch.Tensor, null: torch.Tensor, p: float, u: torch.Tensor
) -> torch.Tensor:
    return drop_labels(labels, null, p, u=u)


def _drop_inputs(gen: torch.Generator) -> dict:
    b = int(torch.randint(4, 17, (), generator=gen))
    sizes = torch.tensor([len(v) for v in ATTRIBUTES.values()])
    labels = (torch.rand(b, len(sizes), generator=gen) * sizes).long()
    return {
        "labels": labels,
        "null": sizes.expand(b, -1).clone(),
        "p": round(float(torch.rand((), generator=gen)) * 0.8 + 0.1, 3),
        "u": torch.rand(b, generator=gen),
    }


def _mistake_drop_labels_reversed(labels, null, p: float, u) -> torch.Tensor:
    keep = (u < p).view(-1, 1)  # keeps the rows it should drop
    return torch.where(keep, labels, null)


def _mistake_drop_labels_zeros(labels, null, p: float, u) -> torch.Tensor:
    keep = (u >= p).view(-1, 1)
    return torch.where(keep, labels, torch.zeros_like(labels))  # 0 is a real class


register(
    "ch05.drop_labels",
    drop_labels_given_u,
    _drop_inputs,
    hint="drop row i when u[i] < p (so that p = 0 drops nothing); keep the dtype "
    "(long) of the labels.",
    mistakes={
        "reverses the condition: drops the rows where u >= p": (
            _mistake_drop_labels_reversed
        ),
        "puts 0 (a real class) in the dropped rows instead of the null row": (
            _mistake_drop_labels_zeros
        ),
    },
)


# ch05.captions_to_labels: a list of captions -> [B, 4] long tensor


def captions_to_labels(captions: list) -> torch.Tensor:
    return torch.stack([parse_caption(c) for c in captions])


def _caption_inputs(gen: torch.Generator) -> dict:
    b = int(torch.randint(1, 9, (), generator=gen))
    sizes = torch.tensor([len(v) for v in ATTRIBUTES.values()])
    labels = (torch.rand(b, len(sizes), generator=gen) * sizes).long()
    templates = torch.randint(0, 4, (b,), generator=gen)
    return {
        "captions": [
            caption_from_labels(lab, int(k)) for lab, k in zip(labels, templates)
        ]
    }


def _mistake_captions_to_labels_list(captions: list) -> list:
    return [parse_caption(c) for c in captions]  # not stacked into a tensor


def _mistake_captions_to_labels_cat(captions: list) -> torch.Tensor:
    return torch.cat([parse_caption(c) for c in captions])  # [4 B], not [B, 4]


register(
    "ch05.captions_to_labels",
    captions_to_labels,
    _caption_inputs,
    hint="the order of the columns is shape, colour, size, position (data.ATTRIBUTES); "
    "the words can come in any order in a caption.",
    mistakes={
        "returns a list of label tensors instead of stacking them": (
            _mistake_captions_to_labels_list
        ),
        "uses torch.cat instead of torch.stack, giving [4 B] instead of [B, 4]": (
            _mistake_captions_to_labels_cat
        ),
    },
)


# ch05.guided_output: classifier-free guidance for a batch, with a real (tiny, random)
# UNet


class _TinyUNet(UNet):
    def __repr__(self) -> str:  # keeps the checker's messages short
        return "UNet(tiny, random weights)"


@functools.lru_cache(maxsize=1)
def _tiny_unet() -> UNet:
    sizes = tuple(len(v) for v in ATTRIBUTES.values())
    model = _TinyUNet(
        UNetConfig(
            base_channels=8,
            channel_mults=(1, 2),
            attention_levels=(1,),
            label_sizes=sizes,
        )
    )
    gen = torch.Generator().manual_seed(5)
    # random weights everywhere (a fresh UNet outputs exactly zero: its last conv
    # starts at 0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval().requires_grad_(False)


def guided_output(
    model, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, w: float
) -> torch.Tensor:
    null = model.null_labels(x_t.shape[0], x_t.device)
    return guided_model_output(model, x_t, t, {"labels": labels}, {"labels": null}, w)


def _guided_inputs(gen: torch.Generator) -> dict:
    b = int(torch.randint(1, 5, (), generator=gen))
    sizes = torch.tensor([len(v) for v in ATTRIBUTES.values()])
    return {
        "model": _tiny_unet(),
        "x_t": torch.randn(b, 3, 8, 8, generator=gen),
        "t": torch.randint(0, 1000, (b,), generator=gen),
        "labels": (torch.rand(b, len(sizes), generator=gen) * sizes).long(),
        "w": round(float(torch.rand((), generator=gen)) * 6 + 0.5, 3),
    }


def _mistake_guided_output_swapped(model, x_t, t, labels, w: float) -> torch.Tensor:
    eps_cond = model(x_t, t, labels=labels)
    eps_uncond = model(x_t, t, labels=model.null_labels(x_t.shape[0]))
    return eps_cond + w * (eps_uncond - eps_cond)  # guides away from the labels


def _mistake_guided_output_zero_null(model, x_t, t, labels, w: float) -> torch.Tensor:
    eps_cond = model(x_t, t, labels=labels)
    eps_uncond = model(x_t, t, labels=torch.zeros_like(labels))  # class 0, not null
    return eps_uncond + w * (eps_cond - eps_uncond)


register(
    "ch05.guided_output",
    guided_output,
    _guided_inputs,
    atol=1e-4,
    hint="run the model twice (or once on a doubled batch): with `labels` and with "
    "model.null_labels(B); then combine eps_uncond + w (eps_cond - eps_uncond).",
    mistakes={
        "swaps the conditional and the unconditional pass": (
            _mistake_guided_output_swapped
        ),
        "uses all-zero labels (real classes) as the unconditional labels": (
            _mistake_guided_output_zero_null
        ),
    },
)

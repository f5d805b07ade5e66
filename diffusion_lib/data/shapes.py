"""Part I's captioned shapes: one filled shape on 16x16 pixels, its caption from a
small grammar and the labels behind it (make_shapes)."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np
import torch

from .geometry import CENTRES, RADII, shape_mask
from .vocabulary import (
    ALL_COLOURS,
    ALL_SHAPES,
    ATTRIBUTES,
    BACKGROUND,
    COLOURS,
    HELD_OUT,
    POSITIONS,
    SHAPES,
    SIZES,
    SPLITS,
)

_TEMPLATES = (
    "a {size} {colour} {shape} in the {position}",
    "a {colour} {shape}, {size}, in the {position}",
    "{position}: a {size} {colour} {shape}",
    "there is a {size} {colour} {shape} in the {position}",
)


def caption_from_labels(labels, template: int = 0) -> str:
    """The caption for one label vector [shape, colour, size, position] using grammar
    rule `template`."""
    # any shape or colour can be named, the new ones too
    names = {**ATTRIBUTES, "shape": ALL_SHAPES, "colour": tuple(ALL_COLOURS)}
    words = {name: values[int(i)] for (name, values), i in zip(names.items(), labels)}
    return _TEMPLATES[template % len(_TEMPLATES)].format(**words)


def parse_caption(caption: str) -> torch.Tensor:
    """Recover the label vector [4] from a caption; raises ValueError if an attribute is
    missing."""
    text = caption.lower().replace("center", "centre")
    labels = []
    for name, values in ATTRIBUTES.items():
        found = [i for i, v in enumerate(values) if re.search(rf"\b{v}\b", text)]
        if len(found) != 1:
            raise ValueError(
                f"caption {caption!r} must name exactly one {name} out of {values}"
            )
        labels.append(found[0])
    return torch.tensor(labels)


def _combo_allowed(shape: str, colour: str, split: str) -> bool:
    held = (shape, colour) in HELD_OUT
    return {"train": not held, "holdout": held, "all": True}[split]


def sample_labels(n: int, seed: int = 0, split: str = "train") -> torch.Tensor:
    """n label vectors [n, 4] drawn uniformly from the attribute combinations allowed in
    `split`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    combos = [
        (s, c)
        for s in range(len(SHAPES))
        for c in range(len(COLOURS))
        if _combo_allowed(SHAPES[s], tuple(COLOURS)[c], split)
    ]
    rng = np.random.default_rng(seed)
    sc = np.array(combos)[rng.integers(len(combos), size=n)]
    size = rng.integers(len(SIZES), size=n)
    pos = rng.integers(len(POSITIONS), size=n)
    return torch.from_numpy(np.stack([sc[:, 0], sc[:, 1], size, pos], axis=1)).long()


def render_shape(
    labels,
    image_size: int = 32,
    rng: np.random.Generator | None = None,
    supersample: int = 4,
) -> np.ndarray:
    """Draw one image [3, H, W] in [0, 1] for labels [shape, colour, size, position],
    anti-aliased.

    rng adds small jitter to the position, size and colour (no jitter when None)."""
    shape, colour, size, position = (
        values[int(i)] for values, i in zip(ATTRIBUTES.values(), labels)
    )
    jit = (
        (lambda scale: rng.uniform(-scale, scale))
        if rng is not None
        else (lambda scale: 0.0)
    )
    cy, cx = CENTRES[position]
    cy, cx, r = cy + jit(0.04), cx + jit(0.04), RADII[size] + jit(0.02)
    n = image_size * supersample
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n + 0.5 / n
    mask = shape_mask(shape, yy, xx, cy, cx, r).astype(np.float32)
    mask = mask.reshape(image_size, supersample, image_size, supersample).mean(
        axis=(1, 3)
    )
    rgb = np.clip(
        np.array(COLOURS[colour]) + np.array([jit(0.04) for _ in range(3)]), 0, 1
    )
    bg = np.array(BACKGROUND)[:, None, None]
    return (bg + (rgb[:, None, None] - bg) * mask[None]).astype(np.float32)


@dataclass
class ShapesData:
    """A batch of captioned shapes: images [N, 3, H, W] in [-1, 1], labels [N, 4],
    captions [N]."""

    images: torch.Tensor
    labels: torch.Tensor
    captions: list

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def render_labels(
    labels: torch.Tensor, image_size: int = 32, seed: int = 0
) -> torch.Tensor:
    """Images [N, 3, H, W] in [-1, 1] of exactly these labels [N, 4], jittered by a
    generator seeded with `seed`."""
    rng = np.random.default_rng(seed)
    images = np.stack(
        [render_shape(lab, image_size, rng) for lab in labels.cpu().numpy()]
    )
    return torch.from_numpy(images) * 2 - 1


def make_shapes(
    n: int, image_size: int = 32, seed: int = 0, split: str = "train"
) -> ShapesData:
    """Generate n captioned shapes, deterministically from `seed`."""
    if n < 1 or image_size < 8:
        raise ValueError(
            f"need n >= 1 and image_size >= 8, got n={n}, image_size={image_size}"
        )
    labels = sample_labels(n, seed, split)
    cap_rng = random.Random(seed)
    captions = [
        caption_from_labels(lab, cap_rng.randrange(len(_TEMPLATES))) for lab in labels
    ]
    return ShapesData(render_labels(labels, image_size, seed + 1), labels, captions)

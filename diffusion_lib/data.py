"""Data sets that need no download, and torchvision loaders for when the reader is
online.

* Captioned shapes: RGB images of one filled shape (circle, square, triangle) in one of
  six named colours, two sizes and five positions, with an English caption from a small
  grammar and the structured labels behind it. Generated deterministically from a seed.
  Some (shape, colour) pairs are held out of the training split (`HELD_OUT`), so that a
  model's compositional generalisation can be measured on them.
* scikit-learn's handwritten digits (1,797 8x8 images, shipped inside scikit-learn).
* MNIST / Fashion-MNIST / CIFAR-10 through torchvision (needs the files, or a network to
  download them).

Images are float tensors in [-1, 1], shaped [N, C, H, W]; labels are [N, 4] integers in
the order of `ATTRIBUTES`.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np
import torch

SHAPES = ("circle", "square", "triangle")
COLOURS = {  # name -> RGB in [0, 1]
    "red": (0.90, 0.15, 0.15),
    "green": (0.15, 0.75, 0.20),
    "blue": (0.20, 0.35, 0.95),
    "yellow": (0.95, 0.85, 0.15),
    "purple": (0.60, 0.25, 0.85),
    "cyan": (0.15, 0.80, 0.85),
}
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "centre")
ATTRIBUTES = {
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "size": SIZES,
    "position": POSITIONS,
}
LABEL_SIZES = tuple(len(v) for v in ATTRIBUTES.values())
HELD_OUT = (("triangle", "blue"), ("circle", "yellow"), ("square", "purple"))
SPLITS = ("train", "holdout", "all")
BACKGROUND = (0.08, 0.08, 0.10)

_CENTRES = {
    "top left": (0.32, 0.32),
    "top right": (0.32, 0.68),
    "bottom left": (0.68, 0.32),
    "bottom right": (0.68, 0.68),
    "centre": (0.5, 0.5),
}  # (row, column) as fractions
_RADII = {"small": 0.17, "large": 0.26}
_TEMPLATES = (
    "a {size} {colour} {shape} in the {position}",
    "a {colour} {shape}, {size}, in the {position}",
    "{position}: a {size} {colour} {shape}",
    "there is a {size} {colour} {shape} in the {position}",
)


def caption_from_labels(labels, template: int = 0) -> str:
    """The caption for one label vector [shape, colour, size, position] using grammar
    rule `template`."""
    words = {
        name: values[int(i)] for (name, values), i in zip(ATTRIBUTES.items(), labels)
    }
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


def _shape_mask(
    shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float
) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return dy**2 + dx**2 <= r**2
    if shape == "square":
        return (np.abs(dy) <= 0.85 * r) & (np.abs(dx) <= 0.85 * r)
    # upward equilateral triangle inscribed in a circle of radius 1.15 r (centroid at
    # the centre)
    R = 1.15 * r
    verts = [(cy - R, cx), (cy + R / 2, cx + R * 0.866), (cy + R / 2, cx - R * 0.866)]
    sides = [
        (x2 - x1) * (yy - y1) - (y2 - y1) * (xx - x1)
        for (y1, x1), (y2, x2) in zip(verts, verts[1:] + verts[:1])
    ]
    return np.all([s >= 0 for s in sides], axis=0) | np.all(
        [s <= 0 for s in sides], axis=0
    )


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
    cy, cx = _CENTRES[position]
    cy, cx, r = cy + jit(0.04), cx + jit(0.04), _RADII[size] + jit(0.02)
    n = image_size * supersample
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n + 0.5 / n
    mask = _shape_mask(shape, yy, xx, cy, cx, r).astype(np.float32)
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


def load_digits_images(image_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's handwritten digits, offline: images [1797, 1, S, S] in [-1, 1] and
    digit labels [1797]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images).float()[:, None] / 16.0
    if image_size != 8:
        x = torch.nn.functional.interpolate(
            x, size=(image_size, image_size), mode="bilinear", align_corners=False
        )
    return x.clamp(0, 1) * 2 - 1, torch.from_numpy(digits.target).long()


TORCHVISION_DATASETS = ("mnist", "fashion-mnist", "cifar10")


def load_torchvision_dataset(
    name: str,
    root: str,
    train: bool = True,
    download: bool = False,
    image_size: int | None = None,
):
    """A torchvision data set whose items are (image [C, H, W] in [-1, 1], class). Needs
    the files under `root`, or download=True and a network (Colab)."""
    from torchvision import datasets, transforms

    classes = {
        "mnist": datasets.MNIST,
        "fashion-mnist": datasets.FashionMNIST,
        "cifar10": datasets.CIFAR10,
    }
    if name not in classes:
        raise ValueError(
            f"unknown data set {name!r}; expected one of {TORCHVISION_DATASETS}"
        )
    steps = [transforms.Resize(image_size)] if image_size else []
    steps += [transforms.ToTensor(), transforms.Normalize(0.5, 0.5)]
    try:
        return classes[name](
            root, train=train, download=download, transform=transforms.Compose(steps)
        )
    except (RuntimeError, OSError) as err:
        hint = (
            "the download failed: are you online?"
            if download
            else "pass download=True where you are online"
        )
        raise RuntimeError(f"{name} not found under {root!r}; {hint} ({err})") from err


def stack_dataset(dataset, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n items of a (image, label) data set as tensors ([n, C, H, W], [n])."""
    n = len(dataset) if n is None else min(n, len(dataset))
    items = [dataset[i] for i in range(n)]
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])

"""Where and how the shapes are drawn: the centres of the five positions, the radii
of the two sizes, how far each shape reaches beyond its radius, and the pixel mask of
a shape. Shared by the renderers (shapes, scenes), the judge that reads images back,
and the editors that mask objects."""

from __future__ import annotations

import numpy as np

CENTRES = {
    "top left": (0.32, 0.32),
    "top right": (0.32, 0.68),
    "bottom left": (0.68, 0.32),
    "bottom right": (0.68, 0.68),
    "centre": (0.5, 0.5),
}  # (row, column) as fractions
RADII = {"small": 0.17, "large": 0.26}

# how far each shape reaches, in units of its radius (shape_mask)
EXTENTS = {"circle": 1.0, "square": 0.85 * 2**0.5, "triangle": 1.15, "diamond": 1.2}


def shape_mask(
    shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float
) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return dy**2 + dx**2 <= r**2
    if shape == "square":
        return (np.abs(dy) <= 0.85 * r) & (np.abs(dx) <= 0.85 * r)
    if shape == "diamond":  # corners 1.2 r from the centre, on the axes
        return np.abs(dy) + np.abs(dx) <= 1.2 * r
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

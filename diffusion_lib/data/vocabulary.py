"""The words of the data sets and their sizes: shapes, colours, sizes, positions,
the held-out combinations, the image sizes and the background colour."""

from __future__ import annotations

SHAPES = ("circle", "square", "triangle")
COLOURS = {  # name -> RGB in [0, 1]
    "red": (0.90, 0.15, 0.15),
    "green": (0.15, 0.75, 0.20),
    "blue": (0.20, 0.35, 0.95),
    "yellow": (0.95, 0.85, 0.15),
    "purple": (0.60, 0.25, 0.85),
    "cyan": (0.15, 0.80, 0.85),
}
# a shape and a colour no scene model was trained on, for teaching one a new word
# (chapter 11); ALL_SHAPES and ALL_COLOURS start with SHAPES and COLOURS, so the labels
# of the usual scenes do not change
NEW_SHAPES = ("diamond",)  # a square standing on a corner
ALL_SHAPES = SHAPES + NEW_SHAPES
NEW_COLOURS = {"orange": (0.95, 0.55, 0.15)}
ALL_COLOURS = {**COLOURS, **NEW_COLOURS}
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
IMAGE_SIZE = 16  # Part I: one shape on 16 x 16 pixels
SCENE_SIZE = 64  # Parts II-IV: scenes of one or two shapes on 64 x 64 pixels
BACKGROUND = (0.08, 0.08, 0.10)

"""Data sets that need no download, and torchvision loaders for when the reader is
online.

* Captioned shapes: RGB images of one filled shape (circle, square, triangle) in one of
  six named colours, two sizes and five positions, with an English caption from a small
  grammar and the structured labels behind it. Generated deterministically from a seed.
  Some (shape, colour) pairs are held out of the training split (`HELD_OUT`), so that a
  model's compositional generalisation can be measured on them.
* Captioned scenes (Part II onwards, `make_scenes`): 64x64 images of one or two such
  shapes. One shape is captioned as above; two are related, "a small red circle to the
  left of a large blue square" (`RELATIONS`), with a few phrasings, and placed so that
  the relation is unambiguous and the shapes neither touch nor leave the image. The
  structured labels (per object shape, colour and size; the relation or the position)
  and the exact geometry (centres, radii) come with each scene. Training scenes avoid
  both `HELD_OUT` and the colour pairings of `HELD_OUT_PAIRINGS`.
* scikit-learn's handwritten digits (1,797 8x8 images, shipped inside scikit-learn).
* MNIST / Fashion-MNIST / CIFAR-10 through torchvision (needs the files, or a network to
  download them).

Images are float tensors in [-1, 1], shaped [N, C, H, W]; the shapes' labels are [N, 4]
integers in the order of `ATTRIBUTES`, the scenes' labels are described in `ScenesData`.

Modules: `vocabulary` (the words and sizes), `geometry` (where and how a shape is drawn:
shared by the renderers, the judge and the editors), `shapes` (Part I), `scenes`
(Parts II-IV: grammar, parser, placement, renderer), `external` (digits, torchvision).
"""

from __future__ import annotations

from .external import (
    TORCHVISION_DATASETS,
    load_digits_images,
    load_torchvision_dataset,
    stack_dataset,
)
from .geometry import (
    CENTRES,
    EXTENTS,
    RADII,
    shape_mask,
)
from .scenes import (
    HELD_OUT_PAIRINGS,
    RELATIONS,
    SCENE_BORDER,
    SCENE_CROSS,
    SCENE_GAP,
    SCENE_OMIT,
    SCENE_RADII,
    SceneLabels,
    ScenesData,
    captions_sha256,
    concept_scenes,
    full_captions,
    make_scenes,
    parse_scene_caption,
    phrase_captions,
    render_scenes,
    sample_scene_labels,
    scene_caption,
    scene_captions,
    scene_held_out,
    scene_masks,
    scene_prompts,
    with_articles,
)
from .shapes import (
    ShapesData,
    caption_from_labels,
    make_shapes,
    parse_caption,
    render_labels,
    render_shape,
    sample_labels,
)
from .vocabulary import (
    ALL_COLOURS,
    ALL_SHAPES,
    ATTRIBUTES,
    BACKGROUND,
    COLOURS,
    HELD_OUT,
    IMAGE_SIZE,
    LABEL_SIZES,
    NEW_COLOURS,
    NEW_SHAPES,
    POSITIONS,
    SCENE_SIZE,
    SHAPES,
    SIZES,
    SPLITS,
)

__all__ = [
    "ALL_COLOURS",
    "ALL_SHAPES",
    "ATTRIBUTES",
    "BACKGROUND",
    "CENTRES",
    "COLOURS",
    "EXTENTS",
    "HELD_OUT",
    "HELD_OUT_PAIRINGS",
    "IMAGE_SIZE",
    "LABEL_SIZES",
    "NEW_COLOURS",
    "NEW_SHAPES",
    "POSITIONS",
    "RADII",
    "RELATIONS",
    "SCENE_BORDER",
    "SCENE_CROSS",
    "SCENE_GAP",
    "SCENE_OMIT",
    "SCENE_RADII",
    "SCENE_SIZE",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "SceneLabels",
    "ScenesData",
    "ShapesData",
    "TORCHVISION_DATASETS",
    "caption_from_labels",
    "captions_sha256",
    "concept_scenes",
    "full_captions",
    "load_digits_images",
    "load_torchvision_dataset",
    "make_scenes",
    "make_shapes",
    "parse_caption",
    "parse_scene_caption",
    "phrase_captions",
    "render_labels",
    "render_scenes",
    "render_shape",
    "sample_labels",
    "sample_scene_labels",
    "scene_caption",
    "scene_captions",
    "scene_held_out",
    "scene_masks",
    "scene_prompts",
    "shape_mask",
    "stack_dataset",
    "with_articles",
]

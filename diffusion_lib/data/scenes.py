"""Parts II-IV's captioned scenes: one or two shapes on 64x64 pixels, their captions
(a grammar of relations and phrasings) and its parser, the placement that keeps a
relation unambiguous, and the renderer (make_scenes, concept_scenes)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from .geometry import CENTRES, EXTENTS, shape_mask
from .shapes import _TEMPLATES, caption_from_labels
from .vocabulary import (
    ALL_COLOURS,
    ALL_SHAPES,
    BACKGROUND,
    COLOURS,
    HELD_OUT,
    NEW_COLOURS,
    NEW_SHAPES,
    POSITIONS,
    SHAPES,
    SIZES,
    SPLITS,
)

# --- Scenes of one or two shapes (Part II onwards) ----------------------------------

RELATIONS = ("to the left of", "to the right of", "above", "below")
# unordered colour pairings never seen together in one training scene
HELD_OUT_PAIRINGS = (("red", "green"), ("blue", "cyan"), ("yellow", "purple"))
SCENE_RADII = {"small": 0.09, "large": 0.14}  # before a +-0.01 jitter
SCENE_GAP = 1 / 16  # min distance between two objects (4 px at 64x64)
SCENE_BORDER = 1 / 32  # min distance of every object from the edge (2 px at 64x64)
SCENE_CROSS = 0.25  # max |cross-axis offset| / |main-axis offset| in a relation
# radius of the circle around each shape, in units of its radius r

_ITS = ("to its left", "to its right", "above it", "below it")  # object 1 named first
_PAIR_TEMPLATES = (
    "a {a} {relation} a {b}",
    "a {a} is {relation} a {b}",
    "there is a {a} {relation} a {b}",
    "a {b} with a {a} {its}",
)


SCENE_OMIT = 0.25  # chance that a caption leaves out a size, or a lone object's place
_BARE_TEMPLATES = ("a {obj}", "there is a {obj}")  # a lone object, no position


def scene_caption(
    objects, relation, position, template: int = 0, omit=(False, False, False)
) -> str:
    """The caption of one scene (objects [2, 3], relation, position, encoded as in
    `ScenesData`) using grammar rule `template`; one object uses Part I's rules.

    omit = (size of object 0, size of object 1, position of a lone object): leave that
    attribute out of the caption ("a red circle above a small blue square", "a large
    green triangle"); the image still has one, the caption just does not say which."""
    objects = torch.as_tensor(objects).tolist()
    phrase = lambda shape, colour, size, leave_out: " ".join(
        ([] if leave_out else [SIZES[size]])
        + [tuple(ALL_COLOURS)[colour], ALL_SHAPES[shape]]
    )
    if objects[1][0] < 0:
        obj = phrase(*objects[0], omit[0])
        if omit[2]:
            return _BARE_TEMPLATES[template % len(_BARE_TEMPLATES)].format(obj=obj)
        if not omit[0]:
            return caption_from_labels([*objects[0], int(position)], template)
        rule = _TEMPLATES[template % len(_TEMPLATES)].replace(", {size},", "")
        words = {"size": "", "colour": "", "shape": "", "position": ""}
        text = rule.replace("{size} {colour} {shape}", "{obj}")
        text = text.replace("{colour} {shape}", "{obj}")
        return text.format(**{**words, "obj": obj, "position": POSITIONS[position]})
    a, b = (phrase(*o, leave_out) for o, leave_out in zip(objects, omit[:2]))
    rule = _PAIR_TEMPLATES[template % len(_PAIR_TEMPLATES)]
    r = int(relation)
    return rule.format(a=a, b=b, relation=RELATIONS[r], its=_ITS[r])


def full_captions(objects, relation, position) -> list[str]:
    """One caption per scene (labels as in `ScenesData`) that names every attribute,
    the grammar's phrasings in turn: what a measurement may judge a model on (a caption
    that leaves out a size or a place cannot be judged on it; make_scenes' own
    captions sometimes do). "an" before a vowel ("an orange circle")."""
    rows = zip(objects, relation, position)
    captions = [scene_caption(*row, template=i) for i, row in enumerate(rows)]
    return with_articles(captions)


def with_articles(captions: list[str]) -> list[str]:
    """ "a orange circle" -> "an orange circle" (the new colour starts with a vowel)."""
    return [re.sub(r"\ba (?=[aeiou])", "an ", c) for c in captions]


_FILLER = {"a", "an", "is", "there"}
_OBJECT_WORDS = set(SHAPES) | set(COLOURS) | set(SIZES)
_SCENE_WORDS = _OBJECT_WORDS | _FILLER | {"in", "with", "its", "it"}
_SCENE_WORDS |= {word for phrase in POSITIONS + RELATIONS for word in phrase.split()}


def _phrases(text: str, phrases) -> list[tuple[int, int, int]]:
    """(start, end, index) of every whole-word occurrence of `phrases` in text."""
    return [
        (m.start(), m.end(), i)
        for i, phrase in enumerate(phrases)
        for m in re.finditer(rf"\b{phrase}\b", text)
    ]


def _parse_object(text: str, which: str, caption: str) -> list[int]:
    """[shape, colour, size] of the one object described by `text`; size -1 when the
    text does not name one."""
    words = text.split()
    labels = []
    for name, values in (("shape", SHAPES), ("colour", COLOURS), ("size", SIZES)):
        found = [tuple(values).index(w) for w in words if w in values]
        if name == "size" and len(found) > 1:
            raise ValueError(
                f"caption {caption!r} names more than one size for {which} "
                f"(at most one of {SIZES})"
            )
        if name != "size" and len(found) != 1:
            raise ValueError(
                f"caption {caption!r} must name exactly one {name} out of "
                f"{tuple(values)} for {which}, found {len(found)}"
            )
        labels.append(found[0] if found else -1)
    extra = [w for w in words if w not in _FILLER | _OBJECT_WORDS]
    if extra:
        raise ValueError(f"unexpected words {extra} for {which} in {caption!r}")
    return labels


def _parse_single(text: str, caption: str) -> tuple[list[int], int]:
    """[shape, colour, size] and position (-1 if not named) of a one-object caption."""
    places = _phrases(text, POSITIONS)
    if len(places) > 1:
        raise ValueError(
            f"caption {caption!r} names more than one position (at most one of "
            f"{POSITIONS})"
        )
    position = places[0][2] if places else -1
    if places:
        text = text[: places[0][0]] + text[places[0][1] :]
    rest = " ".join(w for w in text.split() if w not in ("in", "the"))
    return _parse_object(rest, "the object", caption), position


def _parse_pair(text: str, caption: str) -> tuple[list[list[int]], int]:
    """Objects [[shape, colour, size]] * 2 and relation of a two-object caption."""
    its = _phrases(text, _ITS)
    masked = re.sub(rf"\b(?:{'|'.join(_ITS)})\b", lambda m: "#" * len(m.group()), text)
    forward = _phrases(masked, RELATIONS)
    if len(its) + len(forward) != 1:
        raise ValueError(
            f"caption {caption!r} must relate its two shapes by exactly one of "
            f"{RELATIONS} (or {_ITS} after 'with')"
        )
    start, end, relation = (its + forward)[0]
    if forward:  # "<object 0> <relation> <object 1>"
        first, second = text[:start], text[end:]
    else:  # "<object 1> with <object 0> to its left"
        parts = re.split(r"\bwith\b", text[:start])
        if len(parts) != 2 or text[end:].strip():
            raise ValueError(
                f"caption {caption!r}: use '<object> with <object> {_ITS[relation]}'"
            )
        second, first = parts
    objects = [_parse_object(first, "object 0", caption)]
    return objects + [_parse_object(second, "object 1", caption)], relation


def parse_scene_caption(caption: str) -> dict[str, torch.Tensor]:
    """Recover a scene's labels from its caption: {"objects": [2, 3], "relation": [],
    "position": []}, long, encoded as in `ScenesData`, with -1 for a size or a lone
    object's position that the caption leaves open. Raises ValueError on an unknown
    word or a missing, repeated or misplaced attribute."""
    words = re.findall(r"[a-z]+", caption.lower().replace("center", "centre"))
    unknown = sorted(set(words) - _SCENE_WORDS)
    if unknown:
        raise ValueError(f"unknown words {unknown} in caption {caption!r}")
    n_shapes = sum(w in SHAPES for w in words)
    objects, relation, position = [[-1, -1, -1], [-1, -1, -1]], -1, -1
    if n_shapes == 1:
        if {"with", "its", "it", "to", "of", "above", "below"} & set(words):
            raise ValueError(f"one-shape caption {caption!r} cannot have a relation")
        objects[0], position = _parse_single(" ".join(words), caption)
    elif n_shapes == 2:
        if {"in", "top", "bottom", "centre"} & set(words):
            raise ValueError(f"two-shape caption {caption!r} cannot have a position")
        objects, relation = _parse_pair(" ".join(words), caption)
    else:
        raise ValueError(
            f"caption {caption!r} must name one or two shapes out of {SHAPES}, "
            f"found {n_shapes}"
        )
    return {
        "objects": torch.tensor(objects),
        "relation": torch.tensor(relation),
        "position": torch.tensor(position),
    }


def scene_held_out(objects: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Which scenes (objects [N, 2, 3]) contain a held-out (shape, colour) pair of
    `HELD_OUT`, and which a held-out colour pairing of `HELD_OUT_PAIRINGS`: bool [N]
    each."""
    names = tuple(COLOURS)
    pair_table = torch.zeros(len(SHAPES), len(names), dtype=torch.bool)
    for shape, colour in HELD_OUT:
        pair_table[SHAPES.index(shape), names.index(colour)] = True
    pairing_table = torch.zeros(len(names), len(names), dtype=torch.bool)
    for a, b in HELD_OUT_PAIRINGS:
        pairing_table[names.index(a), names.index(b)] = True
        pairing_table[names.index(b), names.index(a)] = True
    present = objects[..., 0] >= 0  # [N, 2]
    shape, colour = objects[..., 0].clamp(min=0), objects[..., 1].clamp(min=0)
    has_pair = (pair_table[shape, colour] & present).any(1)
    has_pairing = pairing_table[colour[:, 0], colour[:, 1]] & present.all(1)
    return has_pair, has_pairing


def _scene_combos(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The (shape, colour) pairs [K1, 2] allowed for one object, and the ordered
    (shape, colour, shape, colour) [K2, 4] allowed for two objects, in `split`."""
    one = np.array([(s, c) for s in range(len(SHAPES)) for c in range(len(COLOURS))])
    two = np.concatenate([np.repeat(one, len(one), 0), np.tile(one, (len(one), 1))], 1)

    def allowed(combos: np.ndarray) -> np.ndarray:
        objects = torch.full((len(combos), 2, 3), -1)
        k = combos.shape[1] // 2  # objects per scene
        objects[:, :k, :2] = torch.from_numpy(combos).view(len(combos), k, 2)
        held = torch.stack(scene_held_out(objects)).any(0).numpy()
        return combos[{"train": ~held, "holdout": held, "all": held | ~held}[split]]

    return allowed(one), allowed(two)


class SceneLabels(NamedTuple):
    """What n scenes show, by name: objects [n, 2, 3] long (shape, colour, size of
    object 0 and object 1, the second row all -1 in one-object scenes), relation [n]
    long ("object 0 <RELATIONS[relation]> object 1", -1 with one object) and position
    [n] long (a lone object's index into POSITIONS, -1 with two), as in `ScenesData`.
    A tuple, so `objects, relation, position = labels` and `f(*labels)` still work."""

    objects: torch.Tensor
    relation: torch.Tensor
    position: torch.Tensor

    @property
    def num_scenes(self) -> int:
        return self.objects.shape[0]

    @property
    def num_objects(self) -> torch.Tensor:
        """[n] long: 1 or 2."""
        return 1 + (self.objects[:, 1, 0] >= 0).long()

    def select(self, index) -> SceneLabels:
        """The scenes at `index` (a bool mask [n], indices or a slice)."""
        return SceneLabels(*(x[index] for x in self))

    def repeat_interleave(self, k: int) -> SceneLabels:
        """Each scene k times in a row (as the images of k draws per prompt)."""
        return SceneLabels(*(x.repeat_interleave(k, 0) for x in self))

    def roll(self, shifts: int) -> SceneLabels:
        """The labels moved by `shifts` rows: every image paired with another's."""
        return SceneLabels(*(x.roll(shifts, 0) for x in self))

    @staticmethod
    def cat(parts) -> SceneLabels:
        return SceneLabels(*(torch.cat(xs) for xs in zip(*parts)))


def sample_scene_labels(
    n: int, seed: int = 0, split: str = "train", two_object_fraction: float = 0.5
) -> SceneLabels:
    """Labels of n scenes (SceneLabels: objects [n, 2, 3], relation [n], position [n]),
    round(n * two_object_fraction) of them with two objects, drawn uniformly from the
    compositions allowed in `split`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if not 0 <= two_object_fraction <= 1:
        raise ValueError(
            f"two_object_fraction must be in [0, 1], got {two_object_fraction}"
        )
    rng = np.random.default_rng(seed)
    two = rng.permutation(n) < round(n * two_object_fraction)
    n2 = int(two.sum())
    singles, pairs = _scene_combos(split)
    objects = np.full((n, 2, 3), -1)
    objects[~two, 0, :2] = singles[rng.integers(len(singles), size=n - n2)]
    objects[~two, 0, 2] = rng.integers(len(SIZES), size=n - n2)
    objects[two, :, :2] = pairs[rng.integers(len(pairs), size=n2)].reshape(n2, 2, 2)
    objects[two, :, 2] = rng.integers(len(SIZES), size=(n2, 2))
    relation, position = np.full(n, -1), np.full(n, -1)
    relation[two] = rng.integers(len(RELATIONS), size=n2)
    position[~two] = rng.integers(len(POSITIONS), size=n - n2)
    return SceneLabels(
        *(torch.from_numpy(x).long() for x in (objects, relation, position))
    )


def _place_pairs(
    relation: np.ndarray, extents: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Centres [M, 2, 2] (row, column) of M two-object scenes with extents [M, 2].

    Along the relation's main axis (columns for left/right, rows for above/below) the
    centres are d >= extent_0 + extent_1 + SCENE_GAP apart, the other axis differs by
    at most SCENE_CROSS * d, and both objects stay SCENE_BORDER inside the image."""
    low_first = (relation == 0) | (relation == 2)  # object 0 has the smaller coordinate
    e_lo = np.where(low_first, extents[:, 0], extents[:, 1])
    e_hi = np.where(low_first, extents[:, 1], extents[:, 0])
    lo, hi = SCENE_BORDER + e_lo, 1 - SCENE_BORDER - e_hi  # allowed coordinate ranges
    d = rng.uniform(e_lo + e_hi + SCENE_GAP, hi - e_lo - SCENE_BORDER)
    main_lo = rng.uniform(lo, hi - d)
    cross = rng.uniform(-SCENE_CROSS * d, SCENE_CROSS * d)
    cross_lo = rng.uniform(
        np.maximum(lo, SCENE_BORDER + e_hi - cross),
        np.minimum(1 - SCENE_BORDER - e_lo, hi - cross),
    )
    ordered = np.stack(  # [M, 2 (low, high object), 2 (main, cross)]
        [
            np.stack([main_lo, cross_lo], 1),
            np.stack([main_lo + d, cross_lo + cross], 1),
        ],
        1,
    )
    ordered = np.where(low_first[:, None, None], ordered, ordered[:, ::-1])
    horizontal = relation[:, None, None] < 2  # left/right: main axis is the column
    return np.where(horizontal, ordered[..., ::-1], ordered)


def _place_objects(objects, relation, position, rng) -> tuple[np.ndarray, np.ndarray]:
    """Jittered centres [N, 2, 2] (row, column, fractions of the side; NaN where no
    object) and radii [N, 2] (fractions; NaN where no object) for the labels."""
    n = len(objects)
    present = objects[..., 0] >= 0
    base = np.array([SCENE_RADII[s] for s in SIZES])[objects[..., 2].clip(0)]
    radii = np.where(present, base + rng.uniform(-0.01, 0.01, size=(n, 2)), np.nan)
    centres = np.full((n, 2, 2), np.nan)
    one = ~present[:, 1]
    table = np.array([CENTRES[p] for p in POSITIONS])
    centres[one, 0] = table[position[one]] + rng.uniform(-0.04, 0.04, (one.sum(), 2))
    extents = np.array([EXTENTS[s] for s in ALL_SHAPES])[objects[~one, :, 0]]
    centres[~one] = _place_pairs(relation[~one], extents * radii[~one], rng)
    return centres, radii


def scene_masks(
    objects: torch.Tensor,
    centres: torch.Tensor,
    radii: torch.Tensor,
    image_size: int = 64,
    supersample: int = 4,
) -> torch.Tensor:
    """How much of each pixel each object covers: [N, 2, S, S] in [0, 1] for objects
    [N, 2, 3], centres [N, 2, 2] and radii [N, 2] as in `ScenesData`; zeros for an
    absent object. Each shape is evaluated on a supersampled window around it."""
    n, s = len(objects), image_size
    masks = np.zeros((n, 2, s, s), np.float32)
    for i, k in zip(*np.nonzero(objects[..., 0].numpy() >= 0)):
        (cy, cx), r = centres[i, k].tolist(), float(radii[i, k])
        shape = ALL_SHAPES[int(objects[i, k, 0])]
        e = EXTENTS[shape] * r
        r0, c0 = (max(0, int((v - e) * s)) for v in (cy, cx))
        r1, c1 = (min(s, int(np.ceil((v + e) * s)) + 1) for v in (cy, cx))
        ys = (np.arange(r0 * supersample, r1 * supersample) + 0.5) / (s * supersample)
        xs = (np.arange(c0 * supersample, c1 * supersample) + 0.5) / (s * supersample)
        inside = shape_mask(shape, ys[:, None], xs[None, :], cy, cx, r)
        masks[i, k, r0:r1, c0:c1] = inside.reshape(
            r1 - r0, supersample, c1 - c0, supersample
        ).mean(axis=(1, 3))
    return torch.from_numpy(masks)


def render_scenes(
    objects: torch.Tensor,
    relation: torch.Tensor,
    position: torch.Tensor,
    image_size: int = 64,
    seed: int | np.random.SeedSequence = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images [N, 3, S, S] in [-1, 1] of exactly these scene labels, with the centres
    [N, 2, 2] and radii [N, 2] their objects were drawn at (jittered placement, size
    and colour from a generator seeded with `seed`)."""
    rng = np.random.default_rng(seed)
    labels = (x.cpu().numpy() for x in (objects, relation, position))
    centres, radii = (torch.from_numpy(x).float() for x in _place_objects(*labels, rng))
    masks = scene_masks(objects.cpu(), centres, radii, image_size).numpy()
    palette = np.array(list(ALL_COLOURS.values()))
    palette = palette[objects[..., 1].clamp(min=0).numpy()]
    rgb = np.clip(palette + rng.uniform(-0.04, 0.04, palette.shape), 0, 1)
    bg = np.array(BACKGROUND, np.float32)
    images = np.empty((len(masks), 3, image_size, image_size), np.float32)
    images[:] = bg[:, None, None]
    for k in range(2):  # the objects never overlap
        colour = (rgb[:, k] - bg).astype(np.float32)[:, :, None, None]
        images += masks[:, k, None] * colour
    return torch.from_numpy(images) * 2 - 1, centres, radii


@dataclass
class ScenesData:
    """A batch of captioned scenes of one or two shapes.

    images [N, 3, S, S] in [-1, 1]; objects [N, 2, 3] long: (shape, colour, size) of
    object 0 and object 1 as indices into SHAPES, COLOURS, SIZES, the second row all -1
    in one-object scenes; relation [N] long: "object 0 <RELATIONS[relation]> object 1",
    -1 in one-object scenes; position [N] long: index into POSITIONS of a lone object,
    -1 in two-object scenes; centres [N, 2, 2] float: (row, column) of each object's
    centre as fractions of the side, NaN where absent; radii [N, 2] float: each shape's
    radius r as a fraction of the side, NaN where absent; captions [N]."""

    images: torch.Tensor
    objects: torch.Tensor
    relation: torch.Tensor
    position: torch.Tensor
    centres: torch.Tensor
    radii: torch.Tensor
    captions: list

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i], self.captions[i]

    @property
    def num_objects(self) -> torch.Tensor:
        """[N] long: 1 or 2."""
        return 1 + (self.objects[:, 1, 0] >= 0).long()

    @property
    def labels(self) -> SceneLabels:
        return SceneLabels(self.objects, self.relation, self.position)

    def select(self, index) -> ScenesData:
        """The scenes at `index` (a bool mask [N] or indices), as a new ScenesData."""
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            if index.shape != (len(self),):
                raise ValueError(
                    f"a mask must be [{len(self)}], got {tuple(index.shape)}"
                )
            index = torch.nonzero(index).flatten()
        keep = index.long().tolist()
        return ScenesData(
            self.images[index],
            self.objects[index],
            self.relation[index],
            self.position[index],
            self.centres[index],
            self.radii[index],
            [self.captions[i] for i in keep],
        )


def make_scenes(
    n: int,
    image_size: int = 64,
    seed: int = 0,
    split: str = "train",
    two_object_fraction: float = 0.5,
) -> ScenesData:
    """Generate n captioned scenes of one or two shapes, deterministically from
    `seed`; round(n * two_object_fraction) of them have two objects."""
    if n < 1 or image_size < 16:
        raise ValueError(
            f"need n >= 1 and image_size >= 16, got n={n}, image_size={image_size}"
        )
    objects, relation, position = sample_scene_labels(
        n, seed, split, two_object_fraction
    )
    return _scenes_of(objects, relation, position, image_size, seed)


def scene_captions(
    n: int, seed: int = 0, split: str = "train", two_object_fraction: float = 0.5
) -> list[str]:
    """The captions of make_scenes(n, seed=seed, split=split, two_object_fraction=...),
    in order, without rendering a pixel (e.g. to list a training set's captions)."""
    objects, relation, position = sample_scene_labels(
        n, seed, split, two_object_fraction
    )
    return phrase_captions(objects, relation, position, seed)


def phrase_captions(objects, relation, position, seed: int) -> list[str]:
    """The captions make_scenes / concept_scenes give these labels with this seed (the
    same phrasing draws: the rule, and the sizes or place left out)."""
    phrasing_seed = np.random.SeedSequence(seed).spawn(2)[0]
    return _phrase(objects, relation, position, phrasing_seed)


def _phrase(objects, relation, position, phrasing_seed) -> list[str]:
    """A caption for each scene's labels, phrasings drawn from `phrasing_seed`."""
    n_rules = np.lcm.reduce([len(_TEMPLATES), len(_PAIR_TEMPLATES), 2])
    phrasing = np.random.default_rng(phrasing_seed)
    rules = phrasing.integers(n_rules, size=len(objects))
    omit = phrasing.random((len(objects), 3)) < SCENE_OMIT
    return [
        scene_caption(*labels, int(rule), tuple(leave_out))
        for *labels, rule, leave_out in zip(objects, relation, position, rules, omit)
    ]


def _scenes_of(objects, relation, position, image_size, seed) -> ScenesData:
    """ScenesData of these labels: phrasings and rendering drawn from `seed`."""
    phrasing_seed, render_seed = np.random.SeedSequence(seed).spawn(2)
    captions = _phrase(objects, relation, position, phrasing_seed)
    images, centres, radii = render_scenes(
        objects, relation, position, image_size, render_seed
    )
    return ScenesData(images, objects, relation, position, centres, radii, captions)


def concept_scenes(
    n: int, seed: int = 0, concept: str = "diamond", image_size: int = 64
) -> ScenesData:
    """n one-object scenes (any size and place) of a new shape (NEW_SHAPES, in any of
    the usual colours) or in a new colour (NEW_COLOURS, any usual shape), captioned
    with its name ("a large red diamond in the top left"); the labels index into
    ALL_SHAPES and ALL_COLOURS."""
    if concept not in NEW_SHAPES and concept not in NEW_COLOURS:
        raise ValueError(
            f"unknown new concept {concept!r}; expected one of "
            f"{NEW_SHAPES + tuple(NEW_COLOURS)}"
        )
    if n < 1:
        raise ValueError(f"need n >= 1, got {n}")
    objects, relation, position = sample_scene_labels(n, seed, "all", 0.0)
    if concept in NEW_SHAPES:
        objects[:, 0, 0] = ALL_SHAPES.index(concept)
    else:
        objects[:, 0, 1] = tuple(ALL_COLOURS).index(concept)
    scenes = _scenes_of(objects, relation, position, image_size, seed)
    scenes.captions = with_articles(scenes.captions)
    return scenes


def scene_prompts(
    n: int, seed: int, split: str, two_object_fraction: float
) -> tuple[list[str], SceneLabels]:
    """n full captions (every attribute named; the grammar's phrasings in turn) with
    their labels."""
    labels = sample_scene_labels(n, seed, split, two_object_fraction)
    return full_captions(*labels), labels


def captions_sha256(captions) -> str:
    """A fingerprint of a list of prompts, in order: two measurements are on the same
    prompts exactly when their fingerprints are equal (the manifests record it)."""
    return hashlib.sha256("\n".join(captions).encode()).hexdigest()

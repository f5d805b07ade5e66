"""An open-set judge for captioned shapes: it measures an image, not classifies it.

A classifier must name one of the six colours, so an orange circle asked to be yellow
is scored "yellow". The judge instead measures each image and may answer "none of
these" (`NONE`) for any attribute:

1. background: the pixels away from every object must cover `min_background_fraction`
   of the image and lie within `background_tolerance` (RMS distance in RGB, images in
   [0, 1]) of the data set's background colour;
2. objects: the connected regions of pixels that differ visibly from the background
   (`foreground_threshold`), ignoring specks: none is "blank", two or more are
   "extra objects";
3. colour: the median of the object's most saturated pixels; the nearest palette colour
   if it lies within `colour_tolerance`, else NONE (an orange is no yellow);
4. shape: the object's soft mask (each pixel's share of object colour) is compared with
   a clean circle, square and triangle of the same area and centroid (intersection over
   union, IoU); the best fit if its IoU reaches `min_shape_iou`, else NONE;
5. size and position: from the fitted shape's radius and the mask's centroid, the
   nearest size / position of the grammar if it lies within tolerance, else NONE.

Nothing is learned: every threshold is a number in `JudgeConfig`, chosen from the
measured spread of real images (the tests measure it again) and from what a person
would still accept. Images: [B, 3, H, W] in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from .data import (
    ALL_COLOURS,
    ALL_SHAPES,
    ATTRIBUTES,
    BACKGROUND,
    COLOURS,
    POSITIONS,
    RELATIONS,
    SCENE_RADII,
    SHAPES,
    SIZES,
)
from .data.geometry import CENTRES, EXTENTS, RADII, shape_mask

NONE = -1  # "none of these": no value of the attribute fits the image
# area of each shape drawn with "radius" r (see data.geometry.shape_mask): circle
# pi r^2, square (1.7 r)^2, equilateral triangle of circumradius R = 1.15 r:
# 3 sqrt(3)/4 R^2 and diamond 2 (1.2 r)^2
_AREA_PER_R2 = {
    "circle": np.pi,
    "square": 1.7**2,
    "triangle": 1.299 * 1.15**2,
    "diamond": 2 * 1.2**2,
}


@dataclass
class JudgeConfig:
    """Tolerances of the judge (RGB distances for images in [0, 1]; lengths as
    fractions of the image side)."""

    background: tuple = BACKGROUND
    palette: dict = field(default_factory=lambda: dict(COLOURS))
    shapes: tuple = SHAPES  # the templates tried (data.ALL_SHAPES adds the new ones)
    foreground_threshold: float = 0.2  # RGB distance from background: "object"
    min_object_fraction: float = 0.01  # smaller connected regions are specks
    background_tolerance: float = 0.05  # RMS RGB distance of background pixels
    min_background_fraction: float = 0.4  # real images: >= 0.6 of the pixels
    colour_tolerance: float = 0.15  # real shapes: <= 0.07 (colour jitter)
    min_shape_iou: float = 0.8  # real shapes: >= 0.95
    radius_range: tuple = (0.10, 0.34)  # fitted radius outside: size NONE
    max_position_error: float = 0.12  # real shapes: <= 0.06 (jitter)
    supersample: int = 4  # anti-aliasing of the shape templates
    radii: dict = field(default_factory=lambda: dict(RADII))  # the grammar's sizes
    max_objects: int = 1  # more connected regions: "extra objects"
    # two objects are "left of" / "above" each other when the offset along the
    # other axis is at most this share of the offset along the relation's axis
    max_relation_cross: float = 0.5


@dataclass
class Verdict:
    """What the judge measured, one entry per image (B images).

    labels [B, 4]: shape, colour, size, position as indices of data.ATTRIBUTES, NONE
    where no value fits; valid [B]: one object on a clean background; reasons: why an
    image is not valid ("" when it is)."""

    labels: torch.Tensor
    valid: torch.Tensor
    objects: torch.Tensor
    background_rms: torch.Tensor
    colour_rgb: torch.Tensor
    colour_error: torch.Tensor
    shape_iou: torch.Tensor
    reasons: list

    def colour_error_to(
        self, colours: torch.Tensor, palette: dict = None
    ) -> torch.Tensor:
        """RGB distance [B] between each measured colour and the asked palette colour
        (index [B]); NaN where no object was measured."""
        rgb = torch.tensor(list((palette or COLOURS).values()), dtype=torch.float64)
        return (self.colour_rgb - rgb[colours.long().cpu()]).norm(dim=1)


class Judge:
    """judge(images [B, 3, H, W] in [-1, 1]) -> Verdict. Deterministic, no weights."""

    def __init__(self, config: JudgeConfig | None = None):
        self.config = cfg = config or JudgeConfig()
        self.bg = np.asarray(cfg.background, dtype=np.float64)
        self.palette = np.asarray(list(cfg.palette.values()), dtype=np.float64)
        self.centres = np.asarray([CENTRES[p] for p in ATTRIBUTES["position"]])
        self.size_threshold = (cfg.radii["small"] + cfg.radii["large"]) / 2

    def __call__(self, images: torch.Tensor) -> Verdict:
        rows, col = self._measure_all(images)
        return Verdict(
            labels=col("labels", torch.long),
            valid=col("valid", torch.bool),
            objects=col("objects", torch.long),
            background_rms=col("background_rms", torch.float64),
            colour_rgb=col("colour_rgb", torch.float64),
            colour_error=col("colour_error", torch.float64),
            shape_iou=col("shape_iou", torch.float64),
            reasons=[r["reason"] for r in rows],
        )

    def _measure_all(self, images: torch.Tensor):
        """(one `measure` dict per image, col(key, dtype): that key of every row as a
        tensor). NaN pixels count as 0, values outside [-1, 1] are clipped."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        x = torch.nan_to_num(images.detach().float().cpu(), nan=0.0).clamp(-1, 1)
        pixels = ((x + 1) / 2).permute(0, 2, 3, 1).double().numpy()
        rows = [self.measure(p) for p in pixels]
        col = lambda key, dtype: torch.tensor([r[key] for r in rows], dtype=dtype)
        return rows, col

    def measure(self, p: np.ndarray) -> dict:
        """Measure one image p [H, W, 3] in [0, 1] (see the module docstring)."""
        distance, regions, keep, out = self._regions(p)
        out.update(
            {
                "labels": [NONE] * 4,
                "colour_rgb": [float("nan")] * 3,
                "colour_error": float("nan"),
                "shape_iou": 0.0,
            }
        )
        if len(keep) == 1:
            out.update(self._measure_object(p, distance, regions == keep[0]))
        out["reason"] = self._reason(out)
        out["valid"] = out["reason"] == ""
        return out

    def _regions(self, p: np.ndarray):
        """(distance from the background [H, W], connected regions [H, W], the labels
        of the regions that are objects, {"objects", "background_rms",
        "background_fraction"})."""
        cfg, h = self.config, p.shape[0]
        distance = np.linalg.norm(p - self.bg, axis=-1)
        regions, n = ndimage.label(distance > cfg.foreground_threshold, np.ones((3, 3)))
        sizes = ndimage.sum_labels(np.ones_like(distance), regions, range(1, n + 1))
        keep = [
            i + 1 for i, s in enumerate(sizes) if s >= cfg.min_object_fraction * h * h
        ]
        objects = np.isin(regions, keep)
        background = ~ndimage.binary_dilation(objects, iterations=1)
        bg_rms = (
            np.sqrt((distance[background] ** 2).mean()) if background.any() else 0.0
        )
        stats = {
            "objects": len(keep),
            "background_rms": float(bg_rms),
            "background_fraction": background.mean(),
        }
        return distance, regions, keep, stats

    def _reason(self, m: dict) -> str:
        if m["objects"] == 0:
            return "blank"
        if m["objects"] > self.config.max_objects:
            return f"{m['objects']} objects"
        if m["background_fraction"] < self.config.min_background_fraction:
            return "no background"
        if m["background_rms"] > self.config.background_tolerance:
            return "noisy background"
        return ""

    def _measure_object(self, p, distance, region) -> dict:
        cfg = self.config
        core = region & (distance >= 0.9 * distance[region].max())
        rgb = np.median(p[core], axis=0)
        errors = np.linalg.norm(self.palette - rgb, axis=1)
        colour = int(errors.argmin()) if errors.min() <= cfg.colour_tolerance else NONE
        v = rgb - self.bg  # soft mask: each pixel's position between background and rgb
        near = ndimage.binary_dilation(region, iterations=1)
        alpha = np.clip((p - self.bg) @ v / (v @ v), 0, 1) * near
        shape, radius, iou, (cy, cx) = self._fit_shape(alpha)
        size = self._size(radius)
        offsets = np.linalg.norm(self.centres - (cy, cx), axis=1)
        position = (
            int(offsets.argmin()) if offsets.min() <= cfg.max_position_error else NONE
        )
        return {
            "labels": [shape, colour, size, position],
            "colour_rgb": rgb.tolist(),
            "colour_error": float(errors.min()),
            "shape_iou": iou,
            "centre": [float(cy), float(cx)],
        }

    def _size(self, radius: float) -> int:
        lo, hi = self.config.radius_range
        if not lo <= radius <= hi:
            return NONE
        return int(radius > self.size_threshold)  # index of "small" / "large"

    def _fit_shape(self, alpha: np.ndarray):
        """(shape index or NONE, radius, IoU, centroid) of the best-fitting template.

        alpha [H, W] is the object's soft mask; templates are drawn on a window around
        the object (wide enough for every template tried), supersampled."""
        h, s = alpha.shape[0], self.config.supersample
        area = alpha.sum() / h**2
        grid = (np.arange(h) + 0.5) / h
        cy, cx = (alpha.sum(1) @ grid, alpha.sum(0) @ grid) / max(alpha.sum(), 1e-12)
        shapes = self.config.shapes
        r_max = np.sqrt(area / min(_AREA_PER_R2[k] for k in shapes)) * 1.06
        reach = 1.4 * r_max * max(EXTENTS[k] for k in shapes) + 2 / h  # + margin
        (r0, r1), (c0, c1) = (
            (max(0, int((v - reach) * h)), min(h, int(np.ceil((v + reach) * h))))
            for v in (cy, cx)
        )
        window = alpha[r0:r1, c0:c1]
        if window.sum() < 0.999 * alpha.sum():  # the mask reaches outside the window
            window, (r0, r1, c0, c1) = alpha, (0, h, 0, h)
        ys = ((np.arange(r0 * s, r1 * s) + 0.5) / (h * s))[:, None]
        xs = ((np.arange(c0 * s, c1 * s) + 0.5) / (h * s))[None, :]
        best = (NONE, 0.0, 0.0)
        for index, name in enumerate(self.config.shapes):
            r_fit = np.sqrt(area / _AREA_PER_R2[name])
            for r in r_fit * np.array([0.94, 1.0, 1.06]):
                for dy, dx in np.ndindex(3, 3):
                    oy, ox = cy + (dy - 1) * 0.1 * r_fit, cx + (dx - 1) * 0.1 * r_fit
                    mask = shape_mask(name, ys, xs, oy, ox, r)
                    m = mask.reshape(r1 - r0, s, c1 - c0, s).mean(axis=(1, 3))
                    iou = np.minimum(m, window).sum() / np.maximum(m, window).sum()
                    if iou > best[2]:
                        best = (index, r, iou)
        shape = best[0] if best[2] >= self.config.min_shape_iou else NONE
        return shape, float(best[1]), float(best[2]), (cy, cx)


def judged_accuracy(verdict: Verdict, labels: torch.Tensor) -> dict:
    """Per-attribute accuracy of a verdict for prompt labels [B, 4], "clean" (share of
    valid images) and "joint" (valid, and every attribute right): prompt accuracy."""
    if verdict.labels.shape != labels.shape:
        raise ValueError(
            f"labels must be [B, 4] like the verdict's {tuple(verdict.labels.shape)}, "
            f"got {tuple(labels.shape)}"
        )
    right = (verdict.labels == labels.cpu().long()) & verdict.valid[:, None]
    out = {a: right[:, i].float().mean().item() for i, a in enumerate(ATTRIBUTES)}
    out["clean"] = verdict.valid.float().mean().item()
    out["joint"] = right.all(dim=1).float().mean().item()
    return out


def image_statistics(verdict: Verdict, labels: torch.Tensor | None = None) -> dict:
    """Background noise (RMS RGB distance from the background colour, images in [0, 1])
    and, given prompt labels [B, 4], the median distance of the measured colour from the
    asked palette colour."""
    bg = verdict.background_rms.float()
    out = {
        "background_rms_mean": bg.mean().item(),
        "background_rms_median": bg.median().item(),
        "background_rms_p90": bg.quantile(0.9).item(),
    }
    if labels is not None:
        out["colour_error_median"] = (
            verdict.colour_error_to(labels[:, 1]).nanmedian().item()
        )
    return out


def by_pair(verdict: Verdict, labels: torch.Tensor) -> dict:
    """judged_accuracy and image_statistics for each (shape, colour) pair in labels."""
    shapes, colours = ATTRIBUTES["shape"], ATTRIBUTES["colour"]
    out = {}
    for s, c in sorted({tuple(p) for p in labels[:, :2].tolist()}):
        rows = (labels[:, 0] == s) & (labels[:, 1] == c)
        reasons = [r for r, k in zip(verdict.reasons, rows) if k]
        part = Verdict(*(v[rows] for v in _tensor_fields(verdict)), reasons=reasons)
        out[f"{colours[c]} {shapes[s]}"] = {
            "images": int(rows.sum()),
            **judged_accuracy(part, labels[rows]),
            **image_statistics(part, labels[rows]),
        }
    return out


def _tensor_fields(v: Verdict) -> list:
    return [
        v.labels,
        v.valid,
        v.objects,
        v.background_rms,
        v.colour_rgb,
        v.colour_error,
        v.shape_iou,
    ]


# ---------------------------------------------------------------------------------
# Scenes of one or two shapes (Part II onwards)


def scene_judge_config(**overrides) -> JudgeConfig:
    """The judge's tolerances for data.make_scenes images: the scenes' sizes, up to
    two objects, specks below 12 pixels of a 64x64 image."""
    scene = {
        "radii": dict(SCENE_RADII),
        "radius_range": (0.06, 0.20),
        "min_object_fraction": 0.003,
        "max_objects": 2,
    }
    return JudgeConfig(**{**scene, **overrides})


@dataclass
class SceneVerdict:
    """What the scene judge measured in B images, objects in the order they were found
    (top to bottom by first pixel), at most two.

    objects [B, 2, 3]: shape, colour, size of each found object (NONE where no value
    fits, or no object); centres [B, 2, 2]: (row, column) of each, NaN if absent;
    relation [B]: object 0 <RELATIONS[relation]> object 1, NONE unless two objects in
    a clear relation; position [B]: a lone object's POSITIONS index, NONE otherwise;
    count [B]: objects found; valid [B]: one or two objects on a clean background;
    colour_rgb [B, 2, 3], colour_error [B, 2] (to the nearest palette colour),
    shape_iou [B, 2]; background_rms [B]; reasons: why an image is not valid."""

    objects: torch.Tensor
    centres: torch.Tensor
    relation: torch.Tensor
    position: torch.Tensor
    count: torch.Tensor
    valid: torch.Tensor
    colour_rgb: torch.Tensor
    colour_error: torch.Tensor
    shape_iou: torch.Tensor
    background_rms: torch.Tensor
    reasons: list


class SceneJudge(Judge):
    """judge(images [B, 3, 64, 64] in [-1, 1]) -> SceneVerdict: each object measured as
    the Part I judge measures its one object (colour, shape, size; see the module
    docstring), plus the relation between two objects from their centroids."""

    def __init__(self, config: JudgeConfig | None = None):
        super().__init__(config or scene_judge_config())

    def __call__(self, images: torch.Tensor) -> SceneVerdict:
        rows, col = self._measure_all(images)
        return SceneVerdict(
            objects=col("objects_found", torch.long),
            centres=col("centres", torch.float64),
            relation=col("relation", torch.long),
            position=col("position", torch.long),
            count=col("objects", torch.long),
            valid=col("valid", torch.bool),
            colour_rgb=col("colour_rgb", torch.float64),
            colour_error=col("colour_error", torch.float64),
            shape_iou=col("shape_iou", torch.float64),
            background_rms=col("background_rms", torch.float64),
            reasons=[r["reason"] for r in rows],
        )

    def measure(self, p: np.ndarray) -> dict:
        """Measure one scene p [H, W, 3] in [0, 1]."""
        distance, regions, keep, out = self._regions(p)
        nan = float("nan")
        out.update(
            {
                "objects_found": [[NONE] * 3] * 2,
                "centres": [[nan] * 2] * 2,
                "colour_rgb": [[nan] * 3] * 2,
                "colour_error": [nan] * 2,
                "shape_iou": [0.0] * 2,
                "relation": NONE,
                "position": NONE,
            }
        )
        if 1 <= len(keep) <= 2:
            found = [self._measure_object(p, distance, regions == k) for k in keep]
            for key in ("centre", "colour_rgb", "colour_error", "shape_iou"):
                many = "centres" if key == "centre" else key
                out[many] = [f[key] for f in found] + out[many][len(found) :]
            out["objects_found"] = [f["labels"][:3] for f in found] + [[NONE] * 3] * (
                2 - len(found)
            )
            if len(found) == 1:
                out["position"] = found[0]["labels"][3]
            else:
                out["relation"] = self.relation(*out["centres"])
        out["reason"] = self._reason(out)
        out["valid"] = out["reason"] == ""
        return out

    def relation(self, a, b) -> int:
        """Index into RELATIONS of "a <relation> b" for centres (row, column), NONE when
        neither axis clearly dominates the offset."""
        dy, dx = b[0] - a[0], b[1] - a[1]
        main, cross = (dx, dy) if abs(dx) >= abs(dy) else (dy, dx)
        if abs(cross) > self.config.max_relation_cross * abs(main):
            return NONE
        # b right of a: a is "to the left of" b (0); b below a: a is "above" b (2)
        horizontal = abs(dx) >= abs(dy)
        return (0 if main > 0 else 1) if horizontal else (2 if main > 0 else 3)


SCENE_PARTS = ("shape", "colour", "size")  # per object, as in ScenesData.objects


def _matches(found: torch.Tensor, asked: torch.Tensor) -> torch.Tensor:
    """Which values fit the prompt: equal, or left open by it (-1)."""
    return (found == asked) | (asked < 0)


def _align(verdict: SceneVerdict, i: int, objects, relation) -> tuple:
    """(found objects [2, 3] in the prompt's order, the relation read in that order):
    of the two orders, the one with more (shape, colour, size) values right, then
    with the relation right (a tie: "a red circle above a red circle")."""
    found, rel = verdict.objects[i], int(verdict.relation[i])
    if int(verdict.count[i]) != 2 or objects[1, 0] < 0:
        return found, rel
    flipped = rel ^ 1 if rel != NONE else NONE  # "a left of b" is "b right of a"
    orders = [(found, rel), (found.flip(0), flipped)]
    score = lambda o: (int(_matches(o[0], objects).sum()), int(o[1] == relation))
    return max(orders, key=score)


def relation_as_asked(verdict: SceneVerdict, objects: torch.Tensor) -> torch.Tensor:
    """long [B]: the relation the judge found, read in the prompt's object order
    ("object 0 <relation> object 1" with objects [B, 2, 3] as in data.ScenesData);
    NONE where it found no two objects or no clear relation. The judge numbers the
    objects it finds in its own order, so its `relation` alone cannot be compared
    across images; this can."""
    if objects.ndim != 3 or objects.shape[0] != verdict.relation.shape[0]:
        raise ValueError(
            f"objects must be [B, 2, 3] with B = {verdict.relation.shape[0]}, "
            f"got {tuple(objects.shape)}"
        )
    two = (verdict.count == 2) & (objects[:, 1, 0] >= 0)
    # -2: no asked relation to break a tie with (two identical objects stay as found)
    rows = [
        _align(verdict, i, objects[i], -2)[1] if two[i] else NONE
        for i in range(objects.shape[0])
    ]
    return torch.tensor(rows, dtype=torch.long)


def _scene_checks(verdict: SceneVerdict, objects, relation, position) -> dict:
    """Per image: which named attributes are right (see scene_accuracy)."""
    b = objects.shape[0]
    if objects.shape != (b, 2, 3) or relation.shape != (b,) or position.shape != (b,):
        raise ValueError(
            "prompt labels must be objects [B, 2, 3], relation [B], position [B] "
            f"with B = {verdict.objects.shape[0]}, got {tuple(objects.shape)}, "
            f"{tuple(relation.shape)}, {tuple(position.shape)}"
        )
    objects, relation, position = (
        x.cpu().long() for x in (objects, relation, position)
    )
    named = objects[..., 0] >= 0  # [B, 2]
    right = torch.zeros(b, 2, 3, dtype=torch.bool)
    relation_right = torch.zeros(b, dtype=torch.bool)
    for i in range(b):
        found, rel = _align(verdict, i, objects[i], int(relation[i]))
        right[i] = _matches(found, objects[i])
        relation_right[i] = rel == int(relation[i])
    two = named[:, 1]
    count_right = verdict.count == named.sum(1)
    ok = verdict.valid & count_right
    right &= ok[:, None, None]
    placed = (verdict.position == position) | (position < 0)
    where_right = torch.where(two, relation_right, placed) & ok
    return {
        "objects": objects,
        "position": position,
        "named": named,
        "right": right,
        "count_right": count_right,
        "where_right": where_right,
        "joint": (right.all(-1) | ~named).all(1) & where_right,
    }


def keeps_objects(
    verdict: SceneVerdict,
    objects: torch.Tensor,
    relation: torch.Tensor,
    position: torch.Tensor,
) -> torch.Tensor:
    """bool [B]: image i is clean, has the right number of objects and every object
    has its shape and colour (size and layout may differ): what an image variation
    should keep of its source."""
    c = _scene_checks(verdict, objects, relation, position)
    return (c["right"][..., :2].all(-1) | ~c["named"]).all(1)


BINDINGS = ("bound right", "attributes swapped", "other")


def attribute_binding(verdict: SceneVerdict, objects: torch.Tensor) -> torch.Tensor:
    """long [B]: for two-object prompts with two different shapes and two different
    colours ("a red circle ... a blue square"), whether the image binds each colour
    to its shape: 0 = "bound right" (a red circle and a blue square, in any place),
    1 = "attributes swapped" (a blue circle and a red square), 2 = anything else (an
    object missing or extra, a wrong shape or colour, an unclean image); -1 where the
    prompt is not such a pair. Sizes and places are not looked at: this isolates the
    binding of attributes to objects (Ramesh et al. 2022, Fig. 14)."""
    if objects.ndim != 3 or objects.shape[0] != verdict.count.shape[0]:
        raise ValueError(
            f"objects must be [B, 2, 3] with B = {verdict.count.shape[0]}, "
            f"got {tuple(objects.shape)}"
        )
    out = torch.full((objects.shape[0],), -1, dtype=torch.long)
    for i, asked in enumerate(objects.cpu().long()):
        (s0, c0), (s1, c1) = asked[0, :2].tolist(), asked[1, :2].tolist()
        if min(s0, s1) < 0 or s0 == s1 or c0 == c1:
            continue
        found = verdict.objects[i, :, :2].tolist()
        found = (
            sorted(map(tuple, found))
            if verdict.valid[i] and verdict.count[i] == 2
            else []
        )
        if found == sorted([(s0, c0), (s1, c1)]):
            out[i] = 0
        elif found == sorted([(s0, c1), (s1, c0)]):
            out[i] = 1
        else:
            out[i] = 2
    return out


# every image of a binding prompt falls into exactly one of these, checked in this order
BINDING_OUTCOMES = (
    "not clean",
    "object missing or extra",
    "a shape wrong",
    "a colour wrong",
    "attributes swapped",
    "bound right, relation wrong",
    "bound right, relation right",
)


def binding_outcomes(
    verdict: SceneVerdict, objects: torch.Tensor, relation: torch.Tensor
) -> torch.Tensor:
    """long [B]: index into BINDING_OUTCOMES of each image of a binding prompt (two
    different shapes, two different colours; -1 where the prompt is not one): what
    attribute_binding calls "other", broken down (not clean; not two objects; the two
    found shapes are not the two asked; the shapes are, the colours are not), then
    "attributes swapped", and "bound right" split by whether the relation is right."""
    kind = attribute_binding(verdict, objects)
    found_relation = relation_as_asked(verdict, objects)
    out = torch.full_like(kind, -1)
    for i in torch.nonzero(kind >= 0).flatten().tolist():
        asked, found = objects[i, :, :2].cpu().long(), verdict.objects[i, :, :2]
        if not verdict.valid[i]:
            out[i] = 0
        elif verdict.count[i] != 2:
            out[i] = 1
        elif sorted(found[:, 0].tolist()) != sorted(asked[:, 0].tolist()):
            out[i] = 2
        elif kind[i] == 2:  # the shapes are right, so a colour is not
            out[i] = 3
        elif kind[i] == 1:
            out[i] = 4
        else:
            out[i] = 6 if found_relation[i] == int(relation[i]) else 5
    return out


def scene_correct(
    verdict: SceneVerdict,
    objects: torch.Tensor,
    relation: torch.Tensor,
    position: torch.Tensor,
) -> torch.Tensor:
    """bool [B]: image i shows its prompt (the "joint" of scene_accuracy, per image)."""
    return _scene_checks(verdict, objects, relation, position)["joint"]


def scene_accuracy(
    verdict: SceneVerdict,
    objects: torch.Tensor,
    relation: torch.Tensor,
    position: torch.Tensor,
) -> dict:
    """How often each attribute the prompts name is right, for prompt labels encoded as
    in data.ScenesData (objects [B, 2, 3], relation [B], position [B]); a size or a
    lone object's position of -1 (left open by the caption) is right whatever it is.

    Found objects are matched to the prompt's in the order that gets more of their
    values right (the relation is read in that order). "shape", "colour", "size": over
    every object the prompts name (and size where they name it); "count": the number
    of objects; "relation" / "position": over two- / one-object prompts that name one
    (NaN if there are none); "clean": valid
    images; "joint" (prompt accuracy): valid, the right count and every attribute of
    every object right."""
    c = _scene_checks(verdict, objects, relation, position)
    named, right, where_right = c["named"], c["right"], c["where_right"]
    two = named[:, 1]
    mean = lambda x: x.float().mean().item() if x.numel() else float("nan")
    asked = named[..., None] & (c["objects"] >= 0)  # [B, 2, 3]: named attributes
    out = {a: mean(right[..., k][asked[..., k]]) for k, a in enumerate(SCENE_PARTS)}
    out.update(
        count=mean(c["count_right"]),
        relation=mean(where_right[two]),
        position=mean(where_right[~two & (c["position"] >= 0)]),
        clean=mean(verdict.valid),
        joint=mean(c["joint"]),
    )
    return out


def describe_scene(verdict: SceneVerdict, i: int) -> str:
    """The judge's reading of image i in words ("small red circle to the left of large
    blue square"; "?" where no value fits), or why it is not valid."""
    if verdict.reasons[i]:
        return f"not valid: {verdict.reasons[i]}"
    names = (SIZES, tuple(ALL_COLOURS), ALL_SHAPES)  # a judge may know new ones

    def words(row):
        shape, colour, size = row
        return " ".join(
            v[k] if k >= 0 else "?" for v, k in zip(names, (size, colour, shape))
        )

    first = words(verdict.objects[i, 0].tolist())
    if int(verdict.count[i]) == 1:
        p = int(verdict.position[i])
        return f"{first}, {POSITIONS[p] if p >= 0 else '? position'}"
    r = int(verdict.relation[i])
    relation = RELATIONS[r] if r >= 0 else "? relation"
    return f"{first} {relation} {words(verdict.objects[i, 1].tolist())}"

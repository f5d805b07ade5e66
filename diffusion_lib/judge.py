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

from .data import _CENTRES, _RADII, ATTRIBUTES, BACKGROUND, COLOURS, _shape_mask

NONE = -1  # "none of these": no value of the attribute fits the image
# area of each shape drawn with "radius" r (see data._shape_mask): circle pi r^2,
# square (1.7 r)^2, equilateral triangle of circumradius R = 1.15 r: 3 sqrt(3)/4 R^2
_AREA_PER_R2 = {"circle": np.pi, "square": 1.7**2, "triangle": 1.299 * 1.15**2}


@dataclass
class JudgeConfig:
    """Tolerances of the judge (RGB distances for images in [0, 1]; lengths as
    fractions of the image side)."""

    background: tuple = BACKGROUND
    palette: dict = field(default_factory=lambda: dict(COLOURS))
    foreground_threshold: float = 0.2  # RGB distance from background: "object"
    min_object_fraction: float = 0.01  # smaller connected regions are specks
    background_tolerance: float = 0.05  # RMS RGB distance of background pixels
    min_background_fraction: float = 0.4  # real images: >= 0.6 of the pixels
    colour_tolerance: float = 0.15  # real shapes: <= 0.07 (colour jitter)
    min_shape_iou: float = 0.8  # real shapes: >= 0.95
    radius_range: tuple = (0.10, 0.34)  # fitted radius outside: size NONE
    max_position_error: float = 0.12  # real shapes: <= 0.06 (jitter)
    supersample: int = 4  # anti-aliasing of the shape templates


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
        self.centres = np.asarray([_CENTRES[p] for p in ATTRIBUTES["position"]])
        self.size_threshold = (_RADII["small"] + _RADII["large"]) / 2

    def __call__(self, images: torch.Tensor) -> Verdict:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        x = torch.nan_to_num(images.detach().float().cpu(), nan=0.0).clamp(-1, 1)
        pixels = ((x + 1) / 2).permute(0, 2, 3, 1).double().numpy()
        rows = [self.measure(p) for p in pixels]
        col = lambda key, dtype: torch.tensor([r[key] for r in rows], dtype=dtype)
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

    def measure(self, p: np.ndarray) -> dict:
        """Measure one image p [H, W, 3] in [0, 1] (see the module docstring)."""
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
        out = {"objects": len(keep), "background_rms": float(bg_rms),
               "labels": [NONE] * 4, "background_fraction": background.mean(),
               "colour_rgb": [float("nan")] * 3, "colour_error": float("nan"),
               "shape_iou": 0.0}  # fmt: skip
        if len(keep) == 1:
            out.update(self._measure_object(p, distance, regions == keep[0]))
        out["reason"] = self._reason(out)
        out["valid"] = out["reason"] == ""
        return out

    def _reason(self, m: dict) -> str:
        if m["objects"] == 0:
            return "blank"
        if m["objects"] > 1:
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
        return {"labels": [shape, colour, size, position], "colour_rgb": rgb.tolist(),
                "colour_error": float(errors.min()), "shape_iou": iou}  # fmt: skip

    def _size(self, radius: float) -> int:
        lo, hi = self.config.radius_range
        if not lo <= radius <= hi:
            return NONE
        return int(radius > self.size_threshold)  # index of "small" / "large"

    def _fit_shape(self, alpha: np.ndarray):
        """(shape index or NONE, radius, IoU, centroid) of the best-fitting template."""
        h, s = alpha.shape[0], self.config.supersample
        area = alpha.sum() / h**2
        grid = (np.arange(h) + 0.5) / h
        cy, cx = (alpha.sum(1) @ grid, alpha.sum(0) @ grid) / max(alpha.sum(), 1e-12)
        fine = (np.arange(h * s) + 0.5) / (h * s)
        yy, xx = fine[:, None], fine[None, :]
        best = (NONE, 0.0, 0.0)
        for index, name in enumerate(ATTRIBUTES["shape"]):
            r0 = np.sqrt(area / _AREA_PER_R2[name])
            for r in r0 * np.array([0.94, 1.0, 1.06]):
                for dy, dx in np.ndindex(3, 3):
                    oy, ox = cy + (dy - 1) * 0.1 * r0, cx + (dx - 1) * 0.1 * r0
                    mask = _shape_mask(name, yy, xx, oy, ox, r)
                    m = mask.reshape(h, s, h, s).mean(axis=(1, 3))
                    iou = np.minimum(m, alpha).sum() / np.maximum(m, alpha).sum()
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
    return [v.labels, v.valid, v.objects, v.background_rms, v.colour_rgb,
            v.colour_error, v.shape_iou]  # fmt: skip

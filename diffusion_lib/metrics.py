"""Measuring generated images: prompt accuracy with an open-set judge, FID and KID.

* `prompt_accuracy`: the share of images that show exactly what the prompt asks, scored
  by the open-set `Judge` (diffusion_lib/judge.py), which may answer "none of these".
* `Evaluator`: a small CNN trained on the captioned-shapes labels (one head per
  attribute). It is closed-set (it always names a palette colour), so it serves as a
  feature extractor and for comparison (`classifier_accuracy`), never as the score.
* FID (Heusel et al. 2017) and KID (Binkowski et al. 2018), computed as torchmetrics
  computes them (a test checks they agree), on `AppearanceFeatures`: the evaluator's
  features plus colour layout, colour statistics
  and texture, because features trained to recognise shapes are blind to what FID must
  see (noise, brightness). `sensitivity_table` measures what the metric can see. Always
  compare with `real_vs_real`, two disjoint real sets of the same size: FID is biased
  upwards for small samples, so only that difference means much.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import Config
from .data import ATTRIBUTES, BACKGROUND, LABEL_SIZES, make_shapes
from .judge import (  # noqa: F401  (the judge is part of the metrics' interface)
    BINDING_OUTCOMES,
    BINDINGS,
    NONE,
    Judge,
    JudgeConfig,
    SceneJudge,
    SceneVerdict,
    Verdict,
    attribute_binding,
    binding_outcomes,
    by_pair,
    describe_scene,
    image_statistics,
    judged_accuracy,
    keeps_objects,
    relation_as_asked,
    scene_accuracy,
    scene_correct,
    scene_judge_config,
)


@dataclass
class EvaluatorConfig(Config):
    in_channels: int = 3
    width: int = 32
    num_features: int = 128
    label_sizes: tuple = LABEL_SIZES


class Evaluator(nn.Module):
    """images [B, 3, H, W] in [-1, 1] -> list of logits [B, n_i], one per attribute."""

    config_class = EvaluatorConfig  # (pretrained builds it from the manifest)

    def __init__(self, config: EvaluatorConfig = None):
        super().__init__()
        self.config = cfg = config or EvaluatorConfig()
        w = cfg.width
        self.body = nn.Sequential(
            nn.Conv2d(cfg.in_channels, w, 3, padding=1),
            nn.GroupNorm(8, w),
            nn.SiLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.GroupNorm(8, 2 * w),
            nn.SiLU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1),
            nn.GroupNorm(8, 4 * w),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),  # keeps a coarse 4x4 layout, so position is learnable
            nn.Linear(16 * 4 * w, cfg.num_features),
            nn.SiLU(),
        )
        self.heads = nn.ModuleList(
            [nn.Linear(cfg.num_features, n) for n in cfg.label_sizes]
        )

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, num_features]."""
        return self.body(images)

    def forward(self, images: torch.Tensor) -> list:
        h = self.features(images)
        return [head(h) for head in self.heads]

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Predicted labels [B, K]."""
        outs = [
            torch.stack([z.argmax(-1) for z in self(chunk)], dim=1)
            for chunk in images.split(batch_size)
        ]
        return torch.cat(outs)


class EvaluatorFeatures(nn.Module):
    """The evaluator's penultimate layer as a torchmetrics feature extractor."""

    def __init__(self, evaluator: Evaluator):
        super().__init__()
        self.evaluator = evaluator.eval()
        self.num_features = evaluator.config.num_features

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features [B, num_features] of images in [-1, 1], each row rescaled to norm
        sqrt(num_features) (RMS 1 per coordinate), so that KID's kernel
        (x.y / d + 1)^3 works in the same range as with Inception features."""
        f = self.evaluator.features(images.float()).double()
        return f / f.norm(dim=1, keepdim=True).clamp_min(1e-12) * self.num_features**0.5


def attribute_accuracy(
    predicted: torch.Tensor, labels: torch.Tensor, attributes=("shape", "colour")
) -> dict:
    """Per-attribute accuracy and "joint" (all the listed attributes right at once)."""
    names = list(ATTRIBUTES)
    unknown = [a for a in attributes if a not in names]
    if unknown:
        raise ValueError(f"unknown attributes {unknown}; expected names from {names}")
    cols = [names.index(a) for a in attributes]
    correct = predicted[:, cols].cpu() == labels[:, cols].cpu()
    out = {a: correct[:, i].float().mean().item() for i, a in enumerate(attributes)}
    out["joint"] = correct.all(dim=1).float().mean().item()
    return out


def classifier_accuracy(
    evaluator: Evaluator,
    images: torch.Tensor,
    labels: torch.Tensor,
    attributes=("shape", "colour"),
) -> dict:
    """Closed-set accuracy: the share of images [B, 3, H, W] whose *classified*
    attributes match labels [B, 4]. It must name a palette colour, so it cannot see an
    off-palette colour; use `prompt_accuracy` (the open-set judge) to score a model."""
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} label rows")
    device = next(evaluator.parameters()).device
    return attribute_accuracy(evaluator.predict(images.to(device)), labels, attributes)


def prompt_accuracy(
    images: torch.Tensor, labels: torch.Tensor, judge: Judge | None = None
) -> dict:
    """Open-set prompt accuracy of images [B, 3, H, W] for prompt labels [B, 4].

    Per attribute, the share of images that the judge finds valid (one object, clean
    background) with that attribute as asked; "clean" the share of valid images;
    "joint" the share with everything the prompt names right (the headline figure)."""
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} label rows")
    return judged_accuracy((judge or Judge())(images), labels)


def blur(images: torch.Tensor, sigma: float = 0.8) -> torch.Tensor:
    """Separable Gaussian blur of images [B, C, H, W] (5 taps, edges replicated)."""
    taps = torch.arange(-2, 3, dtype=images.dtype, device=images.device)
    k = torch.exp(-(taps**2) / (2 * sigma**2))
    k = (k / k.sum()).repeat(images.shape[1], 1, 1, 1)  # [C, 1, 1, 5]
    c = images.shape[1]
    x = F.conv2d(F.pad(images, (2, 2, 0, 0), mode="replicate"), k, groups=c)
    return F.conv2d(
        F.pad(x, (0, 0, 2, 2), mode="replicate"), k.transpose(2, 3), groups=c
    )


class AppearanceFeatures(nn.Module):
    """Features for FID / KID that see what a reader sees, in four (or five) blocks:

    * semantics: the evaluator's penultimate features (shape, colour, size, position);
    * layout: the image averaged down to 4x4 pixels (where the colours are);
    * colour: per-channel mean, standard deviation, maximum and minimum;
    * texture: per-channel energy of the high frequencies (what blur removes and noise
      adds): |x - blur(x)| and the mean difference between neighbouring pixels;
    * edges (scenes, `edge_steepness=True`): how steep the steepest edges are (90th and
      99th percentiles of the difference between neighbours, over the channel's range),
      since edges are a small share of a 64x64 scene's pixels and their blur hardly
      moves the means.

    Each feature is standardised with the mean and standard deviation measured on a
    reference set of real images, and each block scaled to the same total variance, so
    that no block drowns the others. Images in [-1, 1]."""

    def __init__(
        self,
        evaluator: Evaluator | None,
        reference: torch.Tensor,
        semantic: nn.Module | None = None,
        layout_size: int = 4,
        edge_steepness: bool = False,
    ):
        super().__init__()
        # the semantic block: the evaluator's features (Part I), or any module mapping
        # images to [B, D] features (scenes: CLIP's image embedding)
        self.semantic = (
            semantic if semantic is not None else EvaluatorFeatures(evaluator)
        )
        self.layout_size, self.edge_steepness = layout_size, edge_steepness
        raw = self.raw_blocks(reference)
        self.dims = [b.shape[1] for b in raw]
        f = torch.cat(raw, 1)
        self.register_buffer("mean", f.mean(0))
        # a floor keeps nearly constant features (e.g. texture of clean real images)
        # from being blown up to infinity by the standardisation
        self.register_buffer("std", f.std(0).clamp_min(1e-3) + 0.1 * f.std(0).mean())
        self.num_features = f.shape[1]

    @torch.no_grad()
    def raw_blocks(self, images: torch.Tensor) -> list:
        x = images.float()
        high = x - blur(x, 1.0)
        texture = [
            high.abs().mean((2, 3)),
            high.pow(2).mean((2, 3)).sqrt(),
            x.diff(dim=2).abs().mean((2, 3)),
            x.diff(dim=3).abs().mean((2, 3)),
        ]
        colour = [x.mean((2, 3)), x.std((2, 3)), x.amax((2, 3)), x.amin((2, 3))]
        layout = F.adaptive_avg_pool2d(x, self.layout_size).flatten(1)
        blocks = [self.semantic(x), layout, torch.cat(colour, 1), torch.cat(texture, 1)]
        if self.edge_steepness:  # how sharp the steepest edges are (blur lowers it)
            # relative to each channel's range, so that the colours' contrast cancels
            span = (x.amax((2, 3)) - x.amin((2, 3))).clamp_min(0.05)
            steps = [x.diff(dim=d).abs().flatten(2) for d in (2, 3)]
            edges = [s.quantile(q, dim=2) / span for s in steps for q in (0.9, 0.99)]
            blocks.append(torch.cat(edges, 1))
        return [b.double() for b in blocks]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features [B, num_features]; on real images each coordinate has RMS ~1."""
        f = (torch.cat(self.raw_blocks(images), 1) - self.mean) / self.std
        blocks = f.split(self.dims, 1)
        scale = (self.num_features / len(blocks)) ** 0.5
        return torch.cat([b * scale / b.shape[1] ** 0.5 for b in blocks], 1)


FEATURES = ("appearance", "evaluator")
REFERENCE_SEED = 2024  # the real images that calibrate AppearanceFeatures


@functools.lru_cache(maxsize=4)
def reference_images(image_size: int, n: int = 1000) -> torch.Tensor:
    """The fixed real set [n, 3, S, S] that calibrates AppearanceFeatures."""
    return make_shapes(n, image_size, seed=REFERENCE_SEED, split="all").images


def feature_extractor(
    evaluator: Evaluator, image_size: int, features: str = "appearance"
) -> nn.Module:
    """The torchmetrics feature module for FID / KID: "appearance" (the default) or
    "evaluator" (the evaluator's features alone, blind to noise and brightness)."""
    if features not in FEATURES:
        raise ValueError(f"unknown features {features!r}; expected one of {FEATURES}")
    if features == "evaluator":
        return EvaluatorFeatures(evaluator)
    device = next(evaluator.parameters()).device
    return AppearanceFeatures(evaluator, reference_images(image_size).to(device))


def fid_kid(
    evaluator: Evaluator,
    fake: torch.Tensor,
    real: torch.Tensor,
    kid_subset: int = 100,
    features: str = "appearance",
) -> dict:
    """FID and KID between image sets [N, 3, H, W] in [-1, 1] (AppearanceFeatures)."""
    if fake.shape[1:] != real.shape[1:]:
        raise ValueError(
            f"image shapes differ: {tuple(fake.shape)} vs {tuple(real.shape)}"
        )
    feats = feature_extractor(evaluator, real.shape[-1], features)
    return fid_kid_with(feats, fake, real, kid_subset)


def _features(feats: nn.Module, images: torch.Tensor, device) -> torch.Tensor:
    """feats of images [N, ...] in chunks of 500, on `device`: [N, num_features]."""
    return torch.cat([feats(part.to(device)) for part in images.split(500)])


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between two feature sets [N, D] (Heusel et al. 2017): |mu_r - mu_f|^2 +
    Tr(S_r + S_f - 2 (S_r S_f)^(1/2)), in float64, the square root's trace from the
    eigenvalues of S_r S_f (as torchmetrics computes it: a test checks they agree)."""
    moments = []
    for f in (real.double(), fake.double()):
        n = f.shape[0]
        if n < 2:
            raise ValueError(f"FID needs at least 2 images a side, got {n}")
        mean = f.mean(0, keepdim=True)
        cov = (f.t().mm(f) - n * mean.t().mm(mean)) / (n - 1)
        moments.append((mean.squeeze(0), cov))
    (mu_r, s_r), (mu_f, s_f) = moments
    root = torch.linalg.eigvals(s_r @ s_f).sqrt().real.sum()
    return ((mu_r - mu_f).square().sum() + s_r.trace() + s_f.trace() - 2 * root).item()


def kernel_distance(
    real: torch.Tensor, fake: torch.Tensor, subset: int, subsets: int = 100
) -> tuple[float, float]:
    """KID between two feature sets [N, D] (Binkowski et al. 2018): the unbiased MMD^2
    with the kernel (x.y / D + 1)^3, over `subsets` random subsets of `subset` rows a
    side drawn from torch's global generator (as torchmetrics draws them, so the two
    agree to float rounding). Returns (mean, spread) over the subsets."""
    scores = []
    for _ in range(subsets):
        x = real[torch.randperm(real.shape[0])[:subset]]
        y = fake[torch.randperm(fake.shape[0])[:subset]]
        k_xx, k_yy = (x @ x.T / x.shape[1] + 1) ** 3, (y @ y.T / y.shape[1] + 1) ** 3
        k_xy = (x @ y.T / x.shape[1] + 1) ** 3
        m = x.shape[0]
        within = (k_xx.sum() - k_xx.diag().sum() + k_yy.sum() - k_yy.diag().sum()) / (
            m * (m - 1)
        )
        scores.append(within - 2 * k_xy.sum() / m**2)
    scores = torch.stack(scores)
    return scores.mean().item(), scores.std(unbiased=False).item()


def fid_kid_with(
    feats: nn.Module, fake: torch.Tensor, real: torch.Tensor, kid_subset: int = 100
) -> dict:
    """FID and KID between image sets [N, 3, H, W] through the feature module `feats`
    (an nn.Module with `num_features`, as torchmetrics takes one). KID is the mean over
    100 random subsets of min(kid_subset, N / 2) images a side, kid_std its spread over
    those subsets (NaN below 4 images a side: then the one subset is the whole set).
    The numbers are torchmetrics' FrechetInceptionDistance and KernelInceptionDistance
    (tests/test_metrics.py checks that they agree); computed here because importing
    torchmetrics takes about 6 s, in every process that measures."""
    if fake.shape[1:] != real.shape[1:]:
        raise ValueError(
            f"image shapes differ: {tuple(fake.shape)} vs {tuple(real.shape)}"
        )
    # KID's spread is over random subsets: a subset as large as a whole set is that set
    # every time (a spread of exactly 0), so a subset is at most half of either set;
    # below 4 images a side there is no spread to report (kid_std NaN)
    smallest = min(fake.shape[0], real.shape[0])
    subset = min(kid_subset, smallest // 2 if smallest >= 4 else smallest)
    tensors = itertools.chain(feats.parameters(), feats.buffers())
    device = next(tensors, torch.zeros(())).device
    with torch.no_grad():
        real_f, fake_f = _features(feats, real, device), _features(feats, fake, device)
    kid, kid_std = kernel_distance(real_f, fake_f, subset)
    return {
        "fid": frechet_distance(real_f, fake_f),
        "kid": kid,
        "kid_std": kid_std if subset < smallest else float("nan"),
    }


def real_vs_real(
    evaluator: Evaluator,
    real_a: torch.Tensor,
    real_b: torch.Tensor,
    kid_subset: int = 100,
    features: str = "appearance",
) -> dict:
    """The FID / KID of two disjoint real sets of the same size: the floor a model
    can reach at this sample count."""
    if real_a.shape[0] != real_b.shape[0]:
        raise ValueError(
            "compare real sets of the same size: FID depends on the sample count"
        )
    return fid_kid(evaluator, real_a, real_b, kid_subset, features)


def _shift(images: torch.Tensor, pixels: int) -> torch.Tensor:
    bg = torch.tensor(BACKGROUND, dtype=images.dtype).view(1, 3, 1, 1) * 2 - 1
    out = bg.expand_as(images).clone()
    out[:, :, pixels:, pixels:] = images[:, :, :-pixels, :-pixels]
    return out


_COLOUR_SHIFT = torch.tensor([0.15, -0.1, 0.0]).view(1, 3, 1, 1)  # redder, less green


def _noise(images: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (images + sigma * torch.randn(images.shape, generator=g)).clamp(-1, 1)


DEGRADATIONS = {  # name -> f(images in [-1, 1], seed) -> degraded images
    "darkened to 80%": lambda x, s: (x + 1) * 0.8 - 1,
    "colour shifted": lambda x, s: (x + _COLOUR_SHIFT).clamp(-1, 1),
    "noise sigma 0.05": lambda x, s: _noise(x, 0.05, s),
    "noise sigma 0.2": lambda x, s: _noise(x, 0.2, s),
    "blurred": lambda x, s: blur(x, 0.8),
    "channels swapped": lambda x, s: x.flip(1),
    "shapes moved 2 px": lambda x, s: _shift(x, 2),
}


def sensitivity_table(
    evaluator: Evaluator,
    n: int = 500,
    image_size: int = 16,
    real_pairs: int = 4,
    features: str = "appearance",
    seed: int = 100,
) -> list:
    """Rows {"comparison", "fid", "kid"}: n real images against `real_pairs` other real
    sets of n, then against each degraded copy of another real set (DEGRADATIONS)."""
    feats = feature_extractor(evaluator, image_size, features)
    real = lambda k: make_shapes(n, image_size, seed=seed + k).images
    return _sensitivity(feats, real, real_pairs, DEGRADATIONS, seed)


def _sensitivity(feats, real, real_pairs, degradations, seed) -> list:
    """real(k): the k-th real set (k = 0 is the reference)."""
    reference, rows = real(0), []
    for i in range(real_pairs):
        m = fid_kid_with(feats, real(1 + i), reference)
        rows.append(
            {"comparison": f"real vs real #{i + 1}", "fid": m["fid"], "kid": m["kid"]}
        )
    source = real(1)
    for name, degrade in degradations.items():
        m = fid_kid_with(feats, degrade(source, seed), reference)
        rows.append({"comparison": name, "fid": m["fid"], "kid": m["kid"]})
    return rows


# ---------------------------------------------------------------------------------
# FID / KID for 64x64 scenes (Part II onwards): CLIP's image embedding as semantics


class CLIPImageFeatures(nn.Module):
    """A CLIP image encoder's embedding (before normalisation) as a feature extractor,
    each row rescaled to RMS 1 per coordinate (as EvaluatorFeatures)."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        self.visual = clip_model.visual.eval()
        self.num_features = clip_model.config.embed_dim

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        f = self.visual(images.float()).double()
        return f / f.norm(dim=1, keepdim=True).clamp_min(1e-12) * self.num_features**0.5


@functools.lru_cache(maxsize=2)
def reference_scenes(n: int = 1000) -> torch.Tensor:
    """The fixed real scenes [n, 3, 64, 64] that calibrate the scene features."""
    from .data import make_scenes

    return make_scenes(n, 64, seed=REFERENCE_SEED, split="all").images


def scene_features(clip_model: nn.Module) -> AppearanceFeatures:
    """AppearanceFeatures for scenes: CLIP semantics, a 4x4 colour layout, colour and
    texture statistics, and edge steepness, calibrated on `reference_scenes()`. (An
    8x8 layout raises the real-vs-real floor with its 192 noisy dimensions: blur then
    scored barely 2x real vs real at n = 300, against 2.6x with 4x4.)"""
    device = next(clip_model.parameters()).device
    return AppearanceFeatures(
        None, reference_scenes().to(device), CLIPImageFeatures(clip_model), 4, True
    )


SCENE_DEGRADATIONS = {  # as DEGRADATIONS, with a move visible at 64x64
    **{k: v for k, v in DEGRADATIONS.items() if not k.startswith("shapes moved")},
    "shapes moved 6 px": lambda x, s: _shift(x, 6),
}


def scene_sensitivity_table(
    clip_model, n: int = 500, real_pairs: int = 4, seed: int = 100
) -> list:
    """sensitivity_table for scenes (scene_features, SCENE_DEGRADATIONS)."""
    from .data import make_scenes

    real = lambda k: make_scenes(n, 64, seed=seed + k).images
    feats = scene_features(clip_model)
    return _sensitivity(feats, real, real_pairs, SCENE_DEGRADATIONS, seed)


def count_flops(fn, *args, **kwargs) -> int:
    """Floating-point operations of fn(*args, **kwargs), counted by PyTorch's
    FlopCounterMode (deterministic: usable in tests). Attention runs on PyTorch's
    reference ("math") kernel while counting: FlopCounterMode does not see the fused
    CPU attention kernel and would count attention as 0 FLOPs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as counter:
            fn(*args, **kwargs)
    return counter.get_total_flops()


def diversity(images: torch.Tensor, per_prompt: int) -> float:
    """Mean per-pixel standard deviation (on the [0, 1] scale) across the `per_prompt`
    images of each prompt; images [P * per_prompt, 3, H, W], grouped by prompt."""
    x = (images.float() + 1) / 2
    return x.unflatten(0, (-1, per_prompt)).std(dim=1).mean().item()

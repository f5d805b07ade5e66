"""Measuring generated images: a shapes evaluator, prompt accuracy, and FID / KID on its features.

  * `Evaluator`: a small CNN trained on the captioned-shapes labels (one head per attribute).
  * prompt accuracy: the share of generated images whose predicted attributes match the prompt.
  * FID (Heusel et al. 2017) and KID (Binkowski et al. 2018) via torchmetrics, with the evaluator's
    penultimate features in place of Inception's (Inception knows nothing of 16x16 shapes, and
    would need a download). Always compare with `real_vs_real`, the score of two disjoint real sets
    of the same size: FID is biased upwards for small samples, so only that difference means much.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import ATTRIBUTES, LABEL_SIZES


@dataclass
class EvaluatorConfig:
    in_channels: int = 3
    width: int = 32
    num_features: int = 128
    label_sizes: tuple = LABEL_SIZES

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EvaluatorConfig":
        return cls(**{**d, "label_sizes": tuple(d["label_sizes"])})


class Evaluator(nn.Module):
    """images [B, 3, H, W] in [-1, 1] -> list of logits, one [B, n_i] per attribute of ATTRIBUTES."""

    def __init__(self, config: EvaluatorConfig = None):
        super().__init__()
        self.config = cfg = config or EvaluatorConfig()
        w = cfg.width
        self.body = nn.Sequential(
            nn.Conv2d(cfg.in_channels, w, 3, padding=1), nn.GroupNorm(8, w), nn.SiLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * w), nn.SiLU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.GroupNorm(8, 4 * w), nn.SiLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),  # keeps a coarse 4x4 layout, so position is learnable
            nn.Linear(16 * 4 * w, cfg.num_features), nn.SiLU())
        self.heads = nn.ModuleList([nn.Linear(cfg.num_features, n) for n in cfg.label_sizes])

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, num_features]."""
        return self.body(images)

    def forward(self, images: torch.Tensor) -> list:
        h = self.features(images)
        return [head(h) for head in self.heads]

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Predicted labels [B, K]."""
        outs = [torch.stack([l.argmax(-1) for l in self(chunk)], dim=1) for chunk in images.split(batch_size)]
        return torch.cat(outs)


class EvaluatorFeatures(nn.Module):
    """The evaluator's penultimate layer as a torchmetrics feature extractor (images in [-1, 1])."""

    def __init__(self, evaluator: Evaluator):
        super().__init__()
        self.evaluator = evaluator.eval()
        self.num_features = evaluator.config.num_features

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features [B, num_features], each row rescaled to norm sqrt(num_features) (RMS 1 per coordinate),
        so that KID's kernel (x.y / d + 1)^3 works in the same range as with Inception features."""
        f = self.evaluator.features(images.float()).double()
        return f / f.norm(dim=1, keepdim=True).clamp_min(1e-12) * self.num_features**0.5


def attribute_accuracy(predicted: torch.Tensor, labels: torch.Tensor, attributes=("shape", "colour")) -> dict:
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


def prompt_accuracy(evaluator: Evaluator, images: torch.Tensor, labels: torch.Tensor,
                    attributes=("shape", "colour")) -> dict:
    """Share of generated images [B, 3, H, W] whose predicted attributes match the prompt labels [B, 4]."""
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} label rows")
    device = next(evaluator.parameters()).device
    return attribute_accuracy(evaluator.predict(images.to(device)), labels, attributes)


def fid_kid(evaluator: Evaluator, fake: torch.Tensor, real: torch.Tensor, kid_subset: int = 100) -> dict:
    """FID and KID between two image sets [N, 3, H, W] in [-1, 1], on the evaluator's features."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    feats = EvaluatorFeatures(evaluator)
    subset = min(kid_subset, fake.shape[0], real.shape[0])
    fid = FrechetInceptionDistance(feature=feats, reset_real_features=True)
    kid = KernelInceptionDistance(feature=feats, subset_size=subset, reset_real_features=True)
    device = next(evaluator.parameters()).device
    for metric in (fid, kid):
        metric.to(device)
        for chunk in real.split(500):
            metric.update(chunk.to(device), real=True)
        for chunk in fake.split(500):
            metric.update(chunk.to(device), real=False)
    kid_mean, kid_std = kid.compute()
    return {"fid": fid.compute().item(), "kid": kid_mean.item(), "kid_std": kid_std.item()}


def real_vs_real(evaluator: Evaluator, real_a: torch.Tensor, real_b: torch.Tensor, kid_subset: int = 100) -> dict:
    """The FID / KID of two disjoint real sets of the same size: the floor a model can reach at this size."""
    if real_a.shape[0] != real_b.shape[0]:
        raise ValueError("compare real sets of the same size: FID depends on the sample count")
    return fid_kid(evaluator, real_a, real_b, kid_subset)


def train_evaluator(evaluator: Evaluator, images: torch.Tensor, labels: torch.Tensor, steps: int = 1500,
                    batch_size: int = 128, lr: float = 2e-3, noise_std: float = 0.1, seed: int = 0,
                    progress: bool = True) -> list:
    """Cross-entropy on every attribute head, with Gaussian-noise augmentation (so that the evaluator
    is not thrown by the slight noise left in generated images). Returns the per-step losses."""
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(evaluator.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    losses = []
    evaluator.train()
    for _ in tqdm(range(steps), disable=not progress, desc="evaluator"):
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=gen)
        x = images[idx] + noise_std * torch.rand(batch_size, 1, 1, 1, generator=gen) * torch.randn(images[idx].shape, generator=gen)
        loss = sum(F.cross_entropy(logits, labels[idx, i]) for i, logits in enumerate(evaluator(x)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    evaluator.eval()
    return losses

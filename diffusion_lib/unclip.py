"""unCLIP's decoder and upsampler (Ramesh et al. 2022, Sec. 2.1 and App. C).

Decoder: a pixel-space diffusion UNet (GLIDE-style, Nichol et al. 2022) that inverts
CLIP's image encoder. The CLIP image embedding enters by two paths, as in the paper:
  (1) projected and added to the timestep embedding (every ResBlock sees it);
  (2) projected into four extra context tokens that the attention layers attend to.
The embedding is replaced by zeros 10% of the time during training, so that
classifier-free guidance works at sampling time.

Upsampler: a diffusion UNet conditioned on a low-resolution image, which is enlarged
(bicubic) and concatenated to the noisy high-resolution image as extra channels. As in
the paper it has no attention (it is trained on random crops and run on whole images)
and no guidance, and its conditioning image is corrupted during training (Gaussian
blur), so that it tolerates the decoder's imperfect output.

Shapes: x: [B, 3, H, W] in [-1, 1]; image_embed: [B, D] unit CLIP image embeddings;
low_res: [B, 3, H / f, W / f]. Training: train.train_diffusion (decoder),
train.train_upsampler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import Config
from .metrics import blur
from .unet import UNet, UNetConfig


@dataclass
class DecoderConfig(Config):
    unet: UNetConfig  # needs context_dim; vector_dim is set to embed_dim here
    embed_dim: int = 64
    num_tokens: int = 4  # the paper's four extra context tokens
    image_size: int = 32  # the resolution it generates at


class UnCLIPDecoder(nn.Module):
    """decoder(x_t [B, 3, H, W], t [B], image_embed [B, D]) -> eps [B, 3, H, W]."""

    config_class = DecoderConfig  # (pretrained builds it from the manifest)

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        if config.unet.context_dim is None:
            raise ValueError("the decoder's UNet needs context_dim (for the tokens)")
        # path (1): the embedding added to the time embedding
        unet_cfg = replace(config.unet, vector_dim=config.embed_dim)
        self.unet = UNet(unet_cfg)
        # path (2): the embedding as num_tokens context tokens
        self.to_tokens = nn.Linear(
            config.embed_dim, config.num_tokens * unet_cfg.context_dim
        )

    def tokens(self, image_embed: torch.Tensor) -> torch.Tensor:
        """The four context tokens [B, num_tokens, context_dim]."""
        return self.to_tokens(image_embed).unflatten(-1, (self.config.num_tokens, -1))

    def forward(self, x_t, t, image_embed) -> torch.Tensor:
        d = self.config.embed_dim
        if image_embed.ndim != 2 or image_embed.shape != (x_t.shape[0], d):
            raise ValueError(
                f"image_embed must be [B, {d}] = [{x_t.shape[0]}, {d}], got "
                f"{list(image_embed.shape)}"
            )
        # unit vectors have entries ~ 1/sqrt(D): rescale them to unit variance
        e = image_embed * math.sqrt(d)
        return self.unet(x_t, t, context=self.tokens(e), vector=e)


def downsample(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Area (box) downsampling [B, C, H, W] -> [B, C, H / factor, W / factor]: the
    low-resolution version of a real image that the decoder learns to generate."""
    return F.avg_pool2d(images, factor) if factor > 1 else images


def enlarge(low_res: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic enlargement to size x size, clipped to [-1, 1]: the upsampler's
    conditioning channels, and the baseline it must beat."""
    up = F.interpolate(low_res, size=(size, size), mode="bicubic", align_corners=False)
    return up.clamp(-1, 1)


class UnCLIPUpsampler(nn.Module):
    """upsampler(x_t [B, 3, H, W], t [B], low_res [B, 3, H/f, W/f] or already enlarged
    [B, 3, H, W]) -> eps [B, 3, H, W]."""

    config_class = UNetConfig  # (pretrained builds it from the manifest)

    def __init__(self, config: UNetConfig):
        super().__init__()
        if config.in_channels != 6 or config.attention_levels or config.mid_attention:
            raise ValueError(
                "the upsampler's UNet takes 6 channels (noisy image + enlarged "
                "low-res image) and has no attention (attention_levels=(), "
                "mid_attention=False)"
            )
        self.config = config
        self.unet = UNet(config)

    def forward(self, x_t, t, low_res) -> torch.Tensor:
        if low_res.shape[-1] != x_t.shape[-1]:
            low_res = enlarge(low_res, x_t.shape[-1])
        return self.unet(torch.cat([x_t, low_res], dim=1), t)


def corrupt(low_res: torch.Tensor, cfg, gen) -> torch.Tensor:
    """Gaussian blur of a random share of the conditioning images (each its own
    sigma): the paper's conditioning augmentation for the first upsampler. cfg: a
    train.UpsamplerTrainConfig (blur_prob, blur_sigma)."""
    out = low_res.clone()
    pick = torch.rand(low_res.shape[0], generator=gen) < cfg.blur_prob
    lo, hi = cfg.blur_sigma
    for i in pick.nonzero().flatten().tolist():
        sigma = lo + (hi - lo) * torch.rand((), generator=gen).item()
        out[i : i + 1] = blur(low_res[i : i + 1], sigma)
    return out


def random_crops(images: torch.Tensor, cond: torch.Tensor, size: int, gen):
    """The same random size x size crop of each (image, conditioning) pair."""
    b, _, h, w = images.shape
    ys = torch.randint(0, h - size + 1, (b,), generator=gen).tolist()
    xs = torch.randint(0, w - size + 1, (b,), generator=gen).tolist()
    crop = (
        lambda x: torch.stack(  # noqa: E731
            [
                x[i, :, y : y + size, z : z + size]
                for i, (y, z) in enumerate(zip(ys, xs))
            ]
        )
    )
    return crop(images), crop(cond)

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
    # the paper's conditioning (UnCLIPTextProj): the caption's CLIP text embedding is
    # added to the time embedding beside the image embedding, and its CLIP token
    # states (width text_width) follow the four image tokens in the context: the text
    # pathway GLIDE has, which the paper keeps (Sec. 2.1). False: the image embedding
    # alone (the course's first decoder)
    text_conditioning: bool = False
    text_width: int = 64


class UnCLIPTextProj(nn.Module):
    """What the decoder's UNet is conditioned on, from the CLIP embeddings (diffusers'
    UnCLIPTextProjModel, whose names these are): (1) the image and text embeddings,
    projected and summed, to be added to the time embedding; (2) the context: the
    image embedding as num_tokens tokens, then the caption's token states, projected
    and layer-normed. The embeddings come in multiplied by sqrt(embed_dim) (unit
    entries; diffusers takes them as they are: the export scales these weights)."""

    def __init__(self, embed_dim, time_dim, context_dim, num_tokens, text_width):
        super().__init__()
        self.num_tokens = num_tokens
        self.embedding_proj = nn.Linear(embed_dim, time_dim)  # the text embedding
        self.clip_image_embeddings_project_to_time_embeddings = nn.Linear(
            embed_dim, time_dim
        )
        self.clip_extra_context_tokens_proj = nn.Linear(
            embed_dim, num_tokens * context_dim
        )
        self.encoder_hidden_states_proj = nn.Linear(text_width, context_dim)
        self.text_encoder_hidden_states_norm = nn.LayerNorm(context_dim)

    def forward(self, image_embed, text_embed, text_states):
        """-> (context [B, num_tokens + L, context_dim], added_emb [B, time_dim])."""
        added = self.clip_image_embeddings_project_to_time_embeddings(
            image_embed
        ) + self.embedding_proj(text_embed)
        # [B, C * N] read as [B, C, N], then tokens first: diffusers' layout
        tokens = self.clip_extra_context_tokens_proj(image_embed)
        tokens = tokens.unflatten(-1, (-1, self.num_tokens)).transpose(1, 2)
        text = self.text_encoder_hidden_states_norm(
            self.encoder_hidden_states_proj(text_states)
        )
        return torch.cat([tokens, text], dim=1), added


class UnCLIPDecoder(nn.Module):
    """decoder(x_t [B, 3, H, W], t [B], image_embed [B, D]) -> eps [B, 3, H, W]; with
    text_conditioning also text_embed [B, D], text_states [B, L, text_width] and
    text_mask bool [B, L] (the caption's CLIP embedding, token states, padding)."""

    config_class = DecoderConfig  # (pretrained builds it from the manifest)

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        if config.unet.context_dim is None:
            raise ValueError("the decoder's UNet needs context_dim (for the tokens)")
        if config.text_conditioning:
            self.unet = UNet(replace(config.unet, vector_dim=None))
            self.text_proj = UnCLIPTextProj(
                config.embed_dim,
                config.unet.base_channels * 4,
                config.unet.context_dim,
                config.num_tokens,
                config.text_width,
            )
            return
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

    def forward(
        self, x_t, t, image_embed, text_embed=None, text_states=None, text_mask=None
    ) -> torch.Tensor:
        d, b = self.config.embed_dim, x_t.shape[0]
        if image_embed.ndim != 2 or image_embed.shape != (b, d):
            raise ValueError(
                f"image_embed must be [B, {d}] = [{b}, {d}], got "
                f"{list(image_embed.shape)}"
            )
        # unit vectors have entries ~ 1/sqrt(D): rescale them to unit variance
        e = image_embed * math.sqrt(d)
        if not self.config.text_conditioning:
            return self.unet(x_t, t, context=self.tokens(e), vector=e)
        if text_embed is None or text_states is None or text_mask is None:
            raise ValueError(
                "this decoder reads the caption too: pass text_embed [B, D], "
                "text_states [B, L, text_width] and text_mask [B, L]"
            )
        w = self.config.text_width
        if text_embed.shape != (b, d) or text_states.shape[::2] != (b, w):
            raise ValueError(
                f"text_embed must be [{b}, {d}] and text_states [{b}, L, {w}], got "
                f"{list(text_embed.shape)} and {list(text_states.shape)}"
            )
        context, added = self.text_proj(e, text_embed * math.sqrt(d), text_states)
        image_tokens = text_mask.new_ones(b, self.config.num_tokens, dtype=torch.bool)
        mask = torch.cat([image_tokens, text_mask.bool()], dim=1)
        return self.unet(x_t, t, context=context, added_emb=added, context_mask=mask)


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

"""The unCLIP diffusion prior: caption -> CLIP image embedding.

Ramesh et al. (2022), "Hierarchical Text-Conditional Image Generation with CLIP
Latents", Sec. 2.2 ("Diffusion prior"):
  * a decoder-only (causal) Transformer over the sequence
        [caption token states (L), CLIP text embedding, timestep embedding,
         noised CLIP image embedding z_t, a final query token]
    whose output at the query token is the prediction of the *clean* image embedding
    z_0 (not the noise): the loss is E || f(z_t, t, y) - z_0 ||^2;
  * the text conditioning is dropped 10% of the time, for classifier-free guidance;
  * at sampling time two candidates z_0 are drawn and the one with the higher dot
    product with the text embedding is kept.
As in the released unCLIP code (Kakao Brain's Karlo), the diffusion runs on
embeddings standardised per dimension, z = (e - mean) / std, with the mean and std of
the training image embeddings stored in the model.

Shapes: z_t: [B, D] (D = CLIP's embed_dim); t: [B] integer timesteps;
text_states: [B, L, W] (the CLIP text encoder's token states); text_embed: [B, D];
text_mask: bool [B, L], True at real tokens (False at padding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .clip import TransformerBlock
from .config import Config
from .unet import timestep_embedding


@dataclass
class PriorConfig(Config):
    embed_dim: int = 64  # CLIP's joint embedding size
    text_width: int = 64  # width of the CLIP text encoder's token states
    context_length: int = 20  # caption tokens
    width: int = 128
    layers: int = 4
    heads: int = 4


class DiffusionPrior(nn.Module):
    """prior(z_t, t, text_states, text_embed, text_mask) -> predicted z_0 [B, D]
    (standardised embedding space; see `standardise` / `unstandardise`)."""

    EXTRA_TOKENS = 4  # text embedding, timestep, noised image embedding, query

    config_class = PriorConfig  # (pretrained builds it from the manifest)

    def __init__(self, config: PriorConfig | None = None):
        super().__init__()
        self.config = cfg = config or PriorConfig()
        w, n = cfg.width, cfg.context_length + self.EXTRA_TOKENS
        self.text_proj = nn.Linear(cfg.text_width, w)
        self.text_embed_proj = nn.Linear(cfg.embed_dim, w)
        self.time_mlp = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.x_proj = nn.Linear(cfg.embed_dim, w)
        self.query = nn.Parameter(0.02 * torch.randn(w))
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(n, w))
        self.blocks = nn.ModuleList(
            TransformerBlock(w, cfg.heads) for _ in range(cfg.layers)
        )
        self.ln_final = nn.LayerNorm(w)
        self.out = nn.Linear(w, cfg.embed_dim)
        self.register_buffer("causal_mask", torch.ones(n, n).tril().bool(), False)
        # statistics of the training image embeddings (set by `fit_standardisation`)
        self.register_buffer("embed_mean", torch.zeros(cfg.embed_dim))
        self.register_buffer("embed_std", torch.ones(cfg.embed_dim))

    @torch.no_grad()
    def fit_standardisation(self, image_embeds: torch.Tensor) -> None:
        """Store the per-dimension mean and std of image embeddings [N, D]."""
        self.embed_mean.copy_(image_embeds.mean(0))
        self.embed_std.copy_(image_embeds.std(0).clamp(min=1e-4))

    def standardise(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return (image_embeds - self.embed_mean) / self.embed_std

    def unstandardise(self, z: torch.Tensor) -> torch.Tensor:
        """Back to CLIP's space, then to unit length: [B, D]."""
        return F.normalize(z * self.embed_std + self.embed_mean, dim=-1)

    def _check(self, x_t, text_states, text_embed, text_mask) -> None:
        cfg, b = self.config, x_t.shape[0]
        expected = {
            "x_t": (x_t, (b, cfg.embed_dim)),
            "text_states": (text_states, (b, cfg.context_length, cfg.text_width)),
            "text_embed": (text_embed, (b, cfg.embed_dim)),
            "text_mask": (text_mask, (b, cfg.context_length)),
        }
        for name, (value, shape) in expected.items():
            if tuple(value.shape) != shape:
                raise ValueError(
                    f"{name} must have shape {list(shape)}, got {list(value.shape)}"
                )

    def forward(self, x_t, t, text_states, text_embed, text_mask) -> torch.Tensor:
        self._check(x_t, text_states, text_embed, text_mask)
        w = self.config.width
        tokens = torch.cat(
            [
                self.text_proj(text_states),  # [B, L, w]
                self.text_embed_proj(text_embed)[:, None],
                self.time_mlp(timestep_embedding(t, w))[:, None],
                self.x_proj(x_t)[:, None],
                self.query.expand(x_t.shape[0], 1, w),
            ],
            dim=1,
        )
        h = tokens + self.positional_embedding
        # causal, and no token attends to the caption's padding
        keys = torch.cat([text_mask, text_mask.new_ones(text_mask.shape[0], 4)], 1)
        mask = (self.causal_mask[None] & keys[:, None, :])[:, None]  # [B, 1, N, N]
        for block in self.blocks:
            h = block(h, mask)
        return self.out(self.ln_final(h[:, -1]))


def pick_closest(candidates: torch.Tensor, text_embed: torch.Tensor) -> torch.Tensor:
    """Of k unit candidates [k, B, D] per caption, the one with the highest dot product
    with the caption's text embedding [B, D] (Ramesh et al. 2022, Sec. 2.2): [B, D]."""
    scores = torch.einsum("kbd,bd->kb", candidates, text_embed)
    best = scores.argmax(dim=0)  # [B]
    return candidates[best, torch.arange(candidates.shape[1])]

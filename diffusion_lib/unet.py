"""A UNet noise predictor, as in DDPM and latent diffusion.

Structure follows Ho et al. (2020), Appendix B, and Rombach et al. (2022), Sec. 3.3:
  * sinusoidal timestep embedding (Vaswani et al. 2017, Sec. 3.5) -> MLP;
  * ResBlocks (GroupNorm -> SiLU -> Conv) with the time embedding added between the
    convolutions;
  * self-attention at low resolutions, and optional cross-attention to a context
    sequence (text tokens); projections are named `to_q`, `to_k`, `to_v`, `to_out.0` as
    in diffusers (`to_out` = [projection, dropout]), so peft's LoRA can target them;
  * optional vector conditioning: one learned embedding per label attribute, each with
    an extra "null" index used for classifier-free guidance, added to the time
    embedding.

Shapes: x: [B, C, H, W]; t: [B] integer timesteps; labels: [B, K] (K label attributes);
context: [B, L, context_dim].
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import Config


def timestep_embedding(
    t: torch.Tensor, dim: int, max_period: float = 10000.0
) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps t: [B] -> [B, dim] (cos half, then sin
    half)."""
    if dim % 2:
        raise ValueError(f"embedding dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period)
        * torch.arange(half, device=t.device, dtype=torch.float32)
        / half
    )
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _norm(channels: int, groups: int, eps: float = 1e-5) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels, eps=eps)


class ResBlock(nn.Module):
    """Two 3x3 convolutions with the embedding added in between, and a residual
    connection. emb_dim=0 gives a block without an embedding (as in the VAE).
    resample "up" / "down": the block also doubles (nearest) / halves (2x2 average)
    the resolution, on both paths, after its first norm and SiLU (BigGAN's and ADM's
    "resblock_updown", which GLIDE uses; diffusers' ResnetBlock2D(up/down=True))."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        emb_dim: int = 0,
        dropout: float = 0.0,
        groups: int = 8,
        eps: float = 1e-5,
        resample: str | None = None,
    ):
        super().__init__()
        if resample not in (None, "up", "down"):
            raise ValueError(f"resample must be None, 'up' or 'down', got {resample!r}")
        self.resample = resample
        self.norm1, self.conv1 = (
            _norm(in_ch, groups, eps),
            nn.Conv2d(in_ch, out_ch, 3, padding=1),
        )
        self.emb_proj = nn.Linear(emb_dim, out_ch) if emb_dim else None
        self.norm2, self.dropout = _norm(out_ch, groups, eps), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def _resampled(self, z: torch.Tensor) -> torch.Tensor:
        if self.resample == "up":
            return F.interpolate(z, scale_factor=2.0, mode="nearest")
        return F.avg_pool2d(z, 2) if self.resample == "down" else z

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(self._resampled(F.silu(self.norm1(x))))
        x = self._resampled(x)
        if self.emb_proj is not None:
            if emb is None:
                raise ValueError("this block adds an embedding: pass emb [B, emb_dim]")
            h = h + self.emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


def attention_probabilities(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) for queries [..., N, d] and keys [..., L, d]:
    [..., N, L], each row summing to 1 over the L keys."""
    return (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(dim=-1)


class Attention(nn.Module):
    """Multi-head attention; self-attention when context is None, cross-attention
    otherwise.

    x: [B, N, query_dim], context: [B, L, context_dim] -> [B, N, query_dim].
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        heads: int = 4,
        dim_head: int = 32,
        dropout: float = 0.0,
        bias: bool = False,
    ):
        """bias: whether the query, key and value projections have biases (SD's VAE
        and CLIP's: yes; SD's UNet: no)."""
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=bias)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=bias)
        # (projection, dropout) as in diffusers, so that the usual LoRA target
        # "to_out.0" names the output projection (with a plain Linear it names
        # nothing, and peft silently leaves the projection out)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Dropout(dropout)])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before to_out became a ModuleList (e.g. the shipped
        # shapes-ddpm) store the projection as "to_out.weight" / "to_out.bias":
        # rename them to "to_out.0.*" so that old state dicts still load.
        for name in ("weight", "bias"):
            old = f"{prefix}to_out.{name}"
            if old in state_dict:
                state_dict[f"{prefix}to_out.0.{name}"] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _split_heads(self, z: torch.Tensor) -> torch.Tensor:
        # [B, N, heads * dim_head] -> [B, heads, N, dim_head]
        return z.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def probabilities(
        self, x: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The attention weights softmax(q k^T / sqrt(dim_head)) that `forward` uses
        (without a mask): [B, heads, N, L], each row summing to 1 over the L keys."""
        context = x if context is None else context
        q, k = self._split_heads(self.to_q(x)), self._split_heads(self.to_k(context))
        return attention_probabilities(q, k)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """mask: bool [N, L] (or broadcastable), True where query n may attend to
        key l (e.g. a causal mask in a text transformer)."""
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        split = self._split_heads
        out = F.scaled_dot_product_attention(split(q), split(k), split(v), mask)
        out = out.transpose(1, 2).flatten(2)  # [B, N, heads * dim_head]
        projection, dropout = self.to_out
        return dropout(projection(out))


class AttentionBlock(nn.Module):
    """GroupNorm, then self-attention (and cross-attention when context_dim is set) over
    the H*W positions."""

    def __init__(
        self,
        channels: int,
        context_dim: int | None = None,
        heads: int = 4,
        groups: int = 8,
        eps: float = 1e-5,
        bias: bool = False,
    ):
        super().__init__()
        self.norm = _norm(channels, groups, eps)
        self.attn1 = Attention(channels, None, heads, channels // heads, bias=bias)
        self.norm_cross = nn.LayerNorm(channels) if context_dim else None
        self.attn2 = (
            Attention(channels, context_dim, heads, channels // heads)
            if context_dim
            else None
        )

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # [B, H*W, C]
        delta = self.attn1(tokens)
        if self.attn2 is not None:
            if context is None:
                raise ValueError(
                    "this block has cross-attention: pass context [B, L, context_dim]"
                )
            delta = delta + self.attn2(self.norm_cross(tokens + delta), context)
        return x + delta.transpose(1, 2).reshape(b, c, h, w)


class GlideAttention(nn.Module):
    """GLIDE's attention block (Nichol et al. 2022, which unCLIP's decoder builds on;
    diffusers' Attention with added_kv_proj_dim, in its SimpleCrossAttn blocks):
    GroupNorm, then one attention whose queries are the pixels and whose keys and
    values are the context tokens (add_k_proj, add_v_proj) followed by the pixels
    (to_k, to_v): one softmax over both, one output projection, a residual.

    x [B, C, H, W], context [B, L, context_dim], context_mask bool [B, L] (True: the
    token may be attended; padding is False) -> [B, C, H, W]. The names are
    diffusers'."""

    def __init__(
        self,
        channels: int,
        context_dim: int | None = None,
        heads: int = 4,
        groups: int = 8,
        eps: float = 1e-5,
        dropout: float = 0.0,
    ):
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} heads")
        self.heads = heads
        self.group_norm = nn.GroupNorm(math.gcd(groups, channels), channels, eps=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.add_k_proj = nn.Linear(context_dim, channels) if context_dim else None
        self.add_v_proj = nn.Linear(context_dim, channels) if context_dim else None
        self.to_out = nn.ModuleList(
            [nn.Linear(channels, channels), nn.Dropout(dropout)]
        )

    def _split(self, z: torch.Tensor) -> torch.Tensor:  # [B, N, C] -> [B, h, N, C/h]
        return z.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x, context=None, context_mask=None) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.group_norm(x).flatten(2).transpose(1, 2)  # [B, H*W, C]
        q = self._split(self.to_q(tokens))
        k, v = self._split(self.to_k(tokens)), self._split(self.to_v(tokens))
        mask = None
        if self.add_k_proj is not None:
            if context is None:
                raise ValueError(
                    "this block attends to context tokens: pass context [B, L, "
                    f"{self.add_k_proj.in_features}]"
                )
            k = torch.cat([self._split(self.add_k_proj(context)), k], dim=2)
            v = torch.cat([self._split(self.add_v_proj(context)), v], dim=2)
            if context_mask is not None:
                if context_mask.shape != context.shape[:2]:
                    raise ValueError(
                        f"context_mask must be [B, L] = {list(context.shape[:2])}, "
                        f"got {list(context_mask.shape)}"
                    )
                pixels = context_mask.new_ones(b, h * w)  # every pixel is a key
                mask = torch.cat([context_mask.bool(), pixels], 1)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, mask).transpose(1, 2).flatten(2)
        projection, dropout = self.to_out
        return x + dropout(projection(out)).transpose(1, 2).reshape(b, c, h, w)


class GEGLU(nn.Module):
    """A gated GELU unit (Shazeer 2020, "GLU Variants Improve Transformer"): one
    projection to twice the width, split in two halves h and g -> h * GELU(g)."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * F.gelu(gate)


class FeedForward(nn.Module):
    """The transformer's position-wise MLP in SD: GEGLU to mult * dim, dropout, a linear
    layer back to dim (`net` = [GEGLU, Dropout, Linear], diffusers' layout)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner = dim * mult
        self.net = nn.ModuleList(
            [GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Stable Diffusion's transformer block over tokens [B, N, dim], each sub-layer
    pre-LayerNorm with a residual: self-attention, cross-attention to the context
    (when context_dim is set), feed-forward."""

    def __init__(
        self,
        dim: int,
        heads: int,
        context_dim: int | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        dim_head = dim // heads
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, None, heads, dim_head, dropout)
        self.norm2 = nn.LayerNorm(dim) if context_dim else None
        self.attn2 = (
            Attention(dim, context_dim, heads, dim_head, dropout)
            if context_dim
            else None
        )
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        if self.attn2 is not None:
            if context is None:
                raise ValueError(
                    "this block has cross-attention: pass context [B, L, context_dim]"
                )
            x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Stable Diffusion's attention block (Rombach et al. 2022, Sec. 3.3; diffusers'
    Transformer2DModel): GroupNorm, a 1x1 convolution `proj_in`, the H*W positions as
    tokens through `depth` BasicTransformerBlocks, a 1x1 convolution `proj_out`, and a
    residual connection. proj_out starts at zero, so the block starts as the
    identity."""

    def __init__(
        self,
        channels: int,
        context_dim: int | None = None,
        heads: int = 4,
        groups: int = 8,
        depth: int = 1,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.norm = _norm(channels, groups, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(channels, heads, context_dim, dropout)
            for _ in range(depth)
        )
        self.proj_out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # [B, HW, C]
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        return x + self.proj_out(tokens.transpose(1, 2).reshape(b, c, h, w))


@contextmanager
def record_cross_attention(model: nn.Module):
    """Record what every cross-attention layer of `model` attends to. Inside the
    `with` block each call of such a layer appends (name, probabilities [B, heads, N,
    L]) to the yielded list: N = H*W latent positions (row-major) of the block, L text
    tokens. The hooks are removed on exit.

        with record_cross_attention(unet) as maps:
            unet(z_t, t, context=states)
    """
    records, handles = [], []
    for name, block in model.named_modules():
        if (
            isinstance(block, (AttentionBlock, BasicTransformerBlock))
            and block.attn2 is not None
        ):

            def hook(layer, args, output, name=name):
                x, context = args[:2]
                with torch.no_grad():
                    records.append((name, layer.probabilities(x, context)))

            handles.append(block.attn2.register_forward_hook(hook))
    if not handles:
        raise ValueError("the model has no cross-attention layer (context_dim unset)")
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class UNetConfig(Config):
    """Hyper-parameters of `UNet`. channel_mults[i] scales base_channels at resolution
    level i; attention_levels lists the levels (0 = full resolution) that get attention
    blocks."""

    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 32
    channel_mults: tuple = (1, 2, 2)
    num_res_blocks: int = 1
    attention_levels: tuple = (1, 2)
    heads: int = 4
    dropout: float = 0.0
    groups: int = 8
    # number of classes for each label attribute, () = unconditional
    label_sizes: tuple = ()
    context_dim: int | None = None  # set to enable cross-attention
    # size of an optional global conditioning vector (e.g. a CLIP embedding)
    vector_dim: int | None = None
    # self-attention in the middle block; off for a purely convolutional UNet (e.g. an
    # upsampler trained on crops and run on whole images, as in unCLIP)
    mid_attention: bool = True
    # attention blocks as Stable Diffusion's (SpatialTransformer: proj_in, self- and
    # cross-attention, GEGLU feed-forward, proj_out) instead of DDPM's AttentionBlock
    spatial_transformer: bool = False
    # attention blocks as GLIDE's (GlideAttention: one attention over the context
    # tokens and the pixels), and ResBlocks that re-sample at the levels with
    # attention, as unCLIP's decoder (GLIDE's layout; diffusers' SimpleCrossAttn)
    glide_attention: bool = False


class UNet(nn.Module):
    """model(x [B, C, H, W], t [B], labels [B, K] | None, context [B, L, D] | None,
    vector [B, V] | None) -> [B, out_channels, H, W]."""

    config_class = UNetConfig  # (pretrained builds it from the manifest)

    def __init__(self, config: UNetConfig = None):
        super().__init__()
        self.config = cfg = config or UNetConfig()
        if any(lvl >= len(cfg.channel_mults) for lvl in cfg.attention_levels):
            raise ValueError(
                f"attention_levels {cfg.attention_levels} must be < "
                f"{len(cfg.channel_mults)}"
            )
        if cfg.spatial_transformer and cfg.glide_attention:
            raise ValueError("choose spatial_transformer or glide_attention, not both")
        ch, emb_dim = cfg.base_channels, cfg.base_channels * 4
        self.time_mlp = nn.Sequential(
            nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        # one embedding per attribute; index n_classes is the "null" label (guidance)
        self.label_embs = nn.ModuleList(
            [nn.Embedding(n + 1, emb_dim) for n in cfg.label_sizes]
        )
        self.vector_proj = (
            nn.Linear(cfg.vector_dim, emb_dim) if cfg.vector_dim else None
        )
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        self.down, chans = nn.ModuleList(), [ch]
        for level, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.num_res_blocks):
                self.down.append(
                    self._block(ch, cfg.base_channels * mult, level, emb_dim)
                )
                ch = cfg.base_channels * mult
                chans.append(ch)
            if level < len(cfg.channel_mults) - 1:
                self.down.append(self._resampler(ch, level, emb_dim, "down"))
                chans.append(ch)
        mid_attention = [self._attention(ch)] if cfg.mid_attention else []
        self.mid = nn.ModuleList(
            [
                ResBlock(ch, ch, emb_dim, cfg.dropout, cfg.groups),
                *mid_attention,
                ResBlock(ch, ch, emb_dim, cfg.dropout, cfg.groups),
            ]
        )
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mults))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(
                    self._block(
                        ch + chans.pop(), cfg.base_channels * mult, level, emb_dim
                    )
                )
                ch = cfg.base_channels * mult
            if level > 0:
                self.up.append(self._resampler(ch, level, emb_dim, "up"))
        self.norm_out = _norm(ch, cfg.groups)
        self.conv_out = nn.Conv2d(ch, cfg.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def _block(self, in_ch, out_ch, level, emb_dim):
        cfg = self.config
        res = ResBlock(in_ch, out_ch, emb_dim, cfg.dropout, cfg.groups)
        if level not in cfg.attention_levels:
            return nn.ModuleList([res])
        return nn.ModuleList([res, self._attention(out_ch)])

    def _resampler(self, ch: int, level: int, emb_dim: int, way: str) -> nn.Module:
        """A strided conv (down) or nearest x2 + conv (up); with glide_attention, a
        re-sampling ResBlock at the levels with attention."""
        cfg = self.config
        if cfg.glide_attention and level in cfg.attention_levels:
            return ResBlock(ch, ch, emb_dim, cfg.dropout, cfg.groups, resample=way)
        if way == "down":
            return nn.Conv2d(ch, ch, 3, stride=2, padding=1)
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)
        )

    def _attention(self, channels: int) -> nn.Module:
        cfg = self.config
        if cfg.glide_attention:
            return GlideAttention(
                channels, cfg.context_dim, cfg.heads, cfg.groups, dropout=cfg.dropout
            )
        if cfg.spatial_transformer:
            return SpatialTransformer(
                channels, cfg.context_dim, cfg.heads, cfg.groups, dropout=cfg.dropout
            )
        return AttentionBlock(channels, cfg.context_dim, cfg.heads, cfg.groups)

    @property
    def skip_channels(self) -> list[int]:
        """Channels of each skip connection, in the order the encoder makes them."""
        cfg, out = self.config, [self.config.base_channels]
        for level, mult in enumerate(cfg.channel_mults):
            out += [cfg.base_channels * mult] * cfg.num_res_blocks
            if level < len(cfg.channel_mults) - 1:
                out.append(cfg.base_channels * mult)
        return out

    def null_labels(self, batch_size: int, device=None) -> torch.Tensor:
        """The all-"null" label tensor [B, K] for unconditional (guidance) passes."""
        sizes = torch.tensor(self.config.label_sizes, dtype=torch.long, device=device)
        return sizes.expand(batch_size, -1).clone()

    def _check_labels(self, labels: torch.Tensor, batch: int) -> None:
        k = len(self.label_embs)
        if labels.shape != (batch, k):
            raise ValueError(
                f"labels must have shape [B, {k}] = [{batch}, {k}], "
                f"got {tuple(labels.shape)}"
            )
        if labels.dtype.is_floating_point or labels.dtype.is_complex:
            raise ValueError(
                f"labels must be an integer tensor (torch.long), got {labels.dtype}"
            )

    def embed(self, t, labels=None, vector=None, added_emb=None) -> torch.Tensor:
        """Time embedding plus any label / vector conditioning: [B, 4 * base_channels].

        labels: integer [B, K]; labels[:, k] = label_sizes[k] is the null label.
        added_emb: [B, 4 * base_channels], added as it is (a conditioning projected
        outside the UNet, e.g. unCLIP's CLIP embeddings; diffusers' class_labels with
        class_embed_type "identity")."""
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels))
        if self.label_embs:
            if labels is None:
                labels = self.null_labels(t.shape[0], t.device)
            self._check_labels(labels, t.shape[0])
            emb = emb + sum(e(labels[:, i]) for i, e in enumerate(self.label_embs))
        if self.vector_proj is not None and vector is not None:
            emb = emb + self.vector_proj(vector)
        if added_emb is not None:
            if added_emb.shape != emb.shape:
                raise ValueError(
                    f"added_emb must be [B, {emb.shape[1]}] = {list(emb.shape)}, got "
                    f"{list(added_emb.shape)}"
                )
            emb = emb + added_emb
        return emb

    @staticmethod
    def _resample(layer, h, emb):  # a conv re-sampler, or a re-sampling ResBlock
        return layer(h, emb) if isinstance(layer, ResBlock) else layer(h)

    def _run(self, blocks, h, emb, context, context_mask=None):
        for layer in blocks:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, GlideAttention):
                h = layer(h, context, context_mask)
            else:
                h = layer(h, context)
        return h

    def forward(
        self,
        x,
        t,
        labels=None,
        context=None,
        vector=None,
        down_residuals=None,
        mid_residual=None,
        context_mask=None,
        added_emb=None,
    ):
        """down_residuals (one per skip connection, see `skip_channels`) and
        mid_residual are added to the skips and to the middle block's output: how a
        ControlNet steers a frozen UNet (diffusers' down_block_additional_residuals,
        mid_block_additional_residual). context_mask: bool [B, L], which context
        tokens may be attended (GLIDE attention only); added_emb: see `embed`."""
        if context_mask is not None and not self.config.glide_attention:
            raise ValueError("context_mask needs glide_attention blocks")
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"x must be [B, {self.config.in_channels}, H, W], got {tuple(x.shape)}"
            )
        # every level but the last halves H and W
        factor = 2 ** (len(self.config.channel_mults) - 1)
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(
                f"H and W must be multiples of {factor} (the UNet halves them "
                f"{len(self.config.channel_mults) - 1} times), got {tuple(x.shape[2:])}"
            )
        emb = self.embed(t, labels, vector, added_emb)
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = (
                self._run(layer, h, emb, context, context_mask)
                if isinstance(layer, nn.ModuleList)
                else self._resample(layer, h, emb)
            )
            skips.append(h)
        h = self._run(self.mid, h, emb, context, context_mask)
        if down_residuals is not None:
            if len(down_residuals) != len(skips):
                raise ValueError(
                    f"down_residuals: expected {len(skips)} tensors (one "
                    f"per skip), got {len(down_residuals)}"
                )
            skips = [s + r for s, r in zip(skips, down_residuals)]
        if mid_residual is not None:
            h = h + mid_residual
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                h = torch.cat([h, skips.pop()], dim=1)
                h = self._run(layer, h, emb, context, context_mask)
            else:
                h = self._resample(layer, h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

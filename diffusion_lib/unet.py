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
    connection. emb_dim=0 gives a block without an embedding (as in the VAE)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        emb_dim: int = 0,
        dropout: float = 0.0,
        groups: int = 8,
        eps: float = 1e-5,
    ):
        super().__init__()
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

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
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
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
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
                self.up.append(
                    nn.Sequential(
                        nn.Upsample(scale_factor=2, mode="nearest"),
                        nn.Conv2d(ch, ch, 3, padding=1),
                    )
                )
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

    def _attention(self, channels: int) -> nn.Module:
        cfg = self.config
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

    def embed(self, t, labels=None, vector=None) -> torch.Tensor:
        """Time embedding plus any label / vector conditioning: [B, 4 * base_channels].

        labels: integer [B, K]; labels[:, k] = label_sizes[k] is the null label."""
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels))
        if self.label_embs:
            if labels is None:
                labels = self.null_labels(t.shape[0], t.device)
            self._check_labels(labels, t.shape[0])
            emb = emb + sum(e(labels[:, i]) for i, e in enumerate(self.label_embs))
        if self.vector_proj is not None and vector is not None:
            emb = emb + self.vector_proj(vector)
        return emb

    def _run(self, blocks, h, emb, context):
        for layer in blocks:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h, context)
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
    ):
        """down_residuals (one per skip connection, see `skip_channels`) and
        mid_residual are added to the skips and to the middle block's output: how a
        ControlNet steers a frozen UNet (diffusers' down_block_additional_residuals,
        mid_block_additional_residual)."""
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
        emb = self.embed(t, labels, vector)
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = (
                self._run(layer, h, emb, context)
                if isinstance(layer, nn.ModuleList)
                else layer(h)
            )
            skips.append(h)
        h = self._run(self.mid, h, emb, context)
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
                h = self._run(layer, torch.cat([h, skips.pop()], dim=1), emb, context)
            else:
                h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

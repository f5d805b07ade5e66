"""A KL-regularised convolutional autoencoder: the "first stage" of latent diffusion.

Rombach et al. (2022), Sec. 3 and App. G: an encoder E maps an image x [B, 3, H, W] to
the mean and log-variance of a diagonal Gaussian q(z | x) over latents z
[B, 4, H/f, W/f]; a decoder D maps z back to an image. Trained with a reconstruction
loss plus a small weight beta on KL(q(z | x) || N(0, I)) (Kingma & Welling 2014,
Eq. 10), which keeps the latent space smooth and its scale bounded without forcing it
to be a unit Gaussian. Stable Diffusion's autoencoder has f = 8 and 4 latent channels
(512x512x3 -> 64x64x4); the course's has the same geometry at 64x64x3 -> 8x8x4.

Before diffusion, latents are multiplied by a *scaling factor* so that they have unit
standard deviation (SD's 0.18215 is 1 / std of its latents over a batch of training
images; Rombach et al., Sec. G): `latent_scaling_factor` measures it the same way.

Layout (as in SD's `AutoencoderKL`): conv_in -> one level per resolution of
`blocks_per_level` ResBlocks, each level but the last followed by a stride-2 conv ->
a middle ResBlock, self-attention, ResBlock -> GroupNorm, SiLU, conv_out to 2 x
latent_channels (mean, log-variance). The decoder mirrors it with nearest-neighbour
upsampling + conv.

Shapes: x: [B, 3, H, W] in [-1, 1]; z: [B, latent_channels, H/f, W/f], f =
2 ** (len(channels) - 1). Training: train_parts.train_vae.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import Config
from .samplers import randn
from .unet import AttentionBlock, ResBlock, _norm


@dataclass
class VAEConfig(Config):
    """channels[i] is the width at resolution level i; every level but the last halves
    H and W, so the downsampling factor is 2 ** (len(channels) - 1)."""

    in_channels: int = 3
    latent_channels: int = 4
    channels: tuple = (32, 64, 128, 128)
    blocks_per_level: int = 1
    groups: int = 8
    scaling_factor: float = 1.0  # measured after training (latent_scaling_factor)
    # Stable Diffusion's exact layout (diffusers' AutoencoderKL): downsampling pads
    # only the right and bottom edge, GroupNorm eps 1e-6, attention projections with
    # biases, and the 1x1 quant_conv / post_quant_conv around the latent
    sd_layout: bool = False

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channels) - 1)


class DiagonalGaussian:
    """q(z | x) = N(mean, diag(exp(logvar))); mean, logvar: [B, C, h, w]."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)  # as SD, to keep exp() finite
        self.std = torch.exp(0.5 * self.logvar)

    def sample(
        self,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """z = mean + std * e, e ~ N(0, I) (the reparameterisation trick); e is `noise`
        when given (a data-parallel loop draws the whole batch's)."""
        if noise is None:  # drawn on the generator's device (a CPU one works for CUDA)
            noise = randn(self.mean.shape, generator, self.mean.device, self.mean.dtype)
        elif noise.shape != self.mean.shape:
            raise ValueError(
                f"noise must be shaped like the latent {tuple(self.mean.shape)}, "
                f"got {tuple(noise.shape)}"
            )
        return self.mean + self.std * noise.to(self.mean)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per image, summed over latent elements: [B]."""
        terms = self.mean**2 + self.logvar.exp() - 1.0 - self.logvar
        return 0.5 * terms.flatten(1).sum(dim=1)


def _eps(cfg: VAEConfig) -> float:
    return 1e-6 if cfg.sd_layout else 1e-5


def _level(in_ch: int, out_ch: int, n: int, cfg: VAEConfig) -> nn.Sequential:
    return nn.Sequential(
        *[
            ResBlock(
                in_ch if i == 0 else out_ch, out_ch, groups=cfg.groups, eps=_eps(cfg)
            )
            for i in range(n)
        ]
    )


def _middle(ch: int, cfg: VAEConfig) -> nn.Sequential:
    eps = _eps(cfg)
    return nn.Sequential(
        ResBlock(ch, ch, groups=cfg.groups, eps=eps),
        AttentionBlock(ch, None, 1, cfg.groups, eps, bias=cfg.sd_layout),
        ResBlock(ch, ch, groups=cfg.groups, eps=eps),
    )


class EdgeDownsample(nn.Conv2d):
    """SD's VAE downsampler: pad one row and column of zeros at the bottom and right
    only, then a 3x3 convolution with stride 2 and no padding (H, W -> H/2, W/2)."""

    def __init__(self, channels: int):
        super().__init__(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (0, 1, 0, 1)))


def _downsample(ch: int, cfg: VAEConfig) -> nn.Conv2d:
    if cfg.sd_layout:
        return EdgeDownsample(ch)
    return nn.Conv2d(ch, ch, 3, stride=2, padding=1)


class Encoder(nn.Module):
    """x [B, 3, H, W] -> moments [B, 2 * latent_channels, H/f, W/f]."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch = cfg.channels
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.levels, self.down = nn.ModuleList(), nn.ModuleList()
        for i, out_ch in enumerate(ch):
            self.levels.append(
                _level(ch[max(i - 1, 0)], out_ch, cfg.blocks_per_level, cfg)
            )
            if i < len(ch) - 1:
                self.down.append(_downsample(out_ch, cfg))
        self.mid = _middle(ch[-1], cfg)
        self.norm_out = _norm(ch[-1], cfg.groups, _eps(cfg))
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i, level in enumerate(self.levels):
            h = level(h)
            if i < len(self.down):
                h = self.down[i](h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """z [B, latent_channels, h, w] -> x [B, 3, h * f, w * f]."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch = cfg.channels[::-1]
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        self.mid = _middle(ch[0], cfg)
        self.levels, self.up = nn.ModuleList(), nn.ModuleList()
        for i, out_ch in enumerate(ch):
            self.levels.append(
                _level(ch[max(i - 1, 0)], out_ch, cfg.blocks_per_level + 1, cfg)
            )
            if i < len(ch) - 1:
                self.up.append(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.norm_out = _norm(ch[-1], cfg.groups, _eps(cfg))
        self.conv_out = nn.Conv2d(ch[-1], cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for i, level in enumerate(self.levels):
            h = level(h)
            if i < len(self.up):
                h = self.up[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    """vae.encode(x) -> DiagonalGaussian over z; vae.decode(z) -> x_hat;
    vae(x) -> (x_hat, posterior). z here is the *unscaled* latent: multiply by
    config.scaling_factor before diffusion, divide before decoding (as diffusers)."""

    config_class = VAEConfig  # (pretrained builds it from the manifest)

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        self.config = cfg = config or VAEConfig()
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        if cfg.sd_layout:  # 1x1 convolutions on the moments and on the latent
            moments = 2 * cfg.latent_channels
            self.quant_conv = nn.Conv2d(moments, moments, 1)
            self.post_quant_conv = nn.Conv2d(
                cfg.latent_channels, cfg.latent_channels, 1
            )
        else:
            self.quant_conv = self.post_quant_conv = nn.Identity()

    def _check(self, x: torch.Tensor, channels: int, what: str, multiple: int = 1):
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(
                f"{what} must be [B, {channels}, H, W], got {tuple(x.shape)}"
            )
        if x.shape[2] % multiple or x.shape[3] % multiple:
            raise ValueError(
                f"{what}'s H and W must be multiples of {multiple} (the encoder "
                f"downsamples by {multiple}), got {tuple(x.shape[2:])}"
            )

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        cfg = self.config
        self._check(x, cfg.in_channels, "x", cfg.downsample_factor)
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self._check(z, self.config.latent_channels, "z")
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x, sample: bool = True, generator=None):
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.decode(z), posterior

    @torch.no_grad()
    def encode_scaled(self, x: torch.Tensor, sample: bool = False, generator=None):
        """The latent a diffusion model sees: scaling_factor * z, z the posterior's
        mean (or a sample)."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return z * self.config.scaling_factor

    @torch.no_grad()
    def decode_scaled(self, latents: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [-1, 1] from scaled latents."""
        return self.decode(latents / self.config.scaling_factor).clamp(-1, 1)


def vae_loss(
    x_hat: torch.Tensor,
    x: torch.Tensor,
    posterior: DiagonalGaussian,
    kl_weight: float,
    reconstruction: str = "l1",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, reconstruction, kl), each averaged over the batch and divided by the
    number of image values D = C*H*W:
        loss = (sum_pixels rec(x_hat, x) + kl_weight * KL(q(z|x) || N(0, I))) / D.
    With these units kl_weight matches SD's `kl_weight` (1e-6 in its config)."""
    if reconstruction not in ("l1", "l2"):
        raise ValueError(f"reconstruction must be 'l1' or 'l2', got {reconstruction!r}")
    err = (x_hat - x).abs() if reconstruction == "l1" else (x_hat - x) ** 2
    d = x[0].numel()
    rec = err.flatten(1).sum(dim=1).mean() / d
    kl = posterior.kl().mean() / d
    return rec + kl_weight * kl, rec, kl


@torch.no_grad()
def reconstruct(
    model: AutoencoderKL, images: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """D(mean of E(x)) for images [N, 3, H, W], clamped to [-1, 1]."""
    device = next(model.parameters()).device  # computed there, returned beside images
    out = [
        model.decode(model.encode(images[i : i + batch_size].to(device)).mode())
        .clamp(-1, 1)
        .to(images.device)
        for i in range(0, images.shape[0], batch_size)
    ]
    return torch.cat(out)


def psnr(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, for images in [-1, 1] measured on the
    [0, 1] scale (peak 1): 10 log10(1 / MSE). [N, C, H, W] x 2 -> [N]."""
    if x_hat.shape != x.shape:
        raise ValueError(f"shapes differ: {tuple(x_hat.shape)} vs {tuple(x.shape)}")
    mse = (((x_hat - x) / 2) ** 2).flatten(1).mean(dim=1)
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-10))


@torch.no_grad()
def latent_scaling_factor(
    model: AutoencoderKL, images: torch.Tensor, seed: int = 0, batch_size: int = 256
) -> float:
    """1 / std of latents sampled from q(z | x) over `images`, as SD's 0.18215 was
    measured (Rombach et al. 2022, App. G: "rescale the latent ... to unit standard
    deviation" with a component-wise estimate over the first batch)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.cat(
        [
            model.encode(images[i : i + batch_size]).sample(gen)
            for i in range(0, images.shape[0], batch_size)
        ]
    )
    return 1.0 / z.flatten().std().item()


def compression(image_shape, latent_shape) -> float:
    """How many times fewer numbers the latent has than the image."""
    return math.prod(image_shape) / math.prod(latent_shape)

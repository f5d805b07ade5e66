"""ControlNet (Zhang, Rao and Agrawala 2023, "Adding Conditional Control to
Text-to-Image Diffusion Models"), for the mini SD (chapter 13).

The trained UNet is frozen. A trainable *copy* of its encoder (input convolution, down
blocks, middle block) reads the noisy latent plus a control image, and its features
are added to the frozen UNet's skip connections and middle block through **zero
convolutions** (1x1 convolutions whose weights and biases start at zero, Eq. 1-4):

    y_c = F(x; Θ) + Z(F(x + Z(c; Θ_z1); Θ_c); Θ_z2)

so at the first step the ControlNet adds exactly nothing and the model is the mini SD.
The control image c (here a 64x64 layout mask of the scene's shapes) reaches the
latent resolution through a small convolutional "hint" encoder whose last layer is a
zero convolution too. For 512 -> 64 (8x: three halvings) the paper (Sec. 3.2)
describes four convolutions with 4x4 kernels and 2x2 strides; the released code
(cldm/cldm.py, input_hint_block) has eight 3x3 convolutions, three of them with
stride 2. Here three stride-2 stages do 64 -> 8. Captions are dropped for half of the
training pairs (the paper's 50%), so that the control alone carries the layout.
Training: train.train_controlnet.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .data import scene_masks
from .unet import UNet


def zero_conv(in_ch: int, out_ch: int, kernel: int = 1) -> nn.Conv2d:
    """A convolution whose weight and bias start at zero."""
    conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)
    nn.init.zeros_(conv.weight), nn.init.zeros_(conv.bias)
    return conv


def hint_encoder(control_channels: int, out_channels: int, steps: int) -> nn.Sequential:
    """control [B, c, S, S] -> [B, out_channels, S / 2^steps, S / 2^steps]: pairs of
    3x3 convolutions, the second of each pair with stride 2, SiLU between, the last
    layer a zero convolution."""
    layers, ch = [], control_channels
    for i in range(steps):
        width = 16 * 2**i
        layers += [
            nn.Conv2d(ch, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1, stride=2),
            nn.SiLU(),
        ]
        ch = width
    return nn.Sequential(*layers, zero_conv(ch, out_channels, 3))


class ConditioningEmbedding(nn.Module):
    """The hint encoder as the released code has it (cldm/cldm.py input_hint_block;
    diffusers' ControlNetConditioningEmbedding): a 3x3 convolution to widths[0], then
    for each next width a 3x3 convolution and a 3x3 stride-2 convolution to it (SiLU
    after every one), and a zero 3x3 convolution to out_channels. len(widths) - 1
    halvings: 64 -> 8 takes four widths."""

    def __init__(self, control_channels: int, out_channels: int, widths):
        super().__init__()
        self.conv_in = nn.Conv2d(control_channels, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            self.blocks.append(nn.Conv2d(w_in, w_in, 3, padding=1))
            self.blocks.append(nn.Conv2d(w_in, w_out, 3, padding=1, stride=2))
        self.conv_out = zero_conv(widths[-1], out_channels, 3)

    def forward(self, control: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv_in(control))
        for block in self.blocks:
            h = F.silu(block(h))
        return self.conv_out(h)


class ControlNet(nn.Module):
    """controlnet(x_t [B, C, h, w], t [B], control [B, c, h * f, w * f], context) ->
    (down_residuals, mid_residual) for UNet.forward; f = 2^hint_steps.

    hint_widths: the released code's hint encoder (ConditioningEmbedding, what
    diffusers' ControlNetModel has) with these widths, hint_steps = len - 1; None:
    the course's first hint encoder (`hint_encoder`), which diffusers cannot load."""

    def __init__(
        self,
        unet: UNet,
        control_channels: int = 1,
        hint_steps: int = 3,
        hint_widths: tuple | None = None,
    ):
        super().__init__()
        enc = copy.deepcopy(unet)  # the trainable copy, initialised from the UNet
        enc.up, enc.norm_out, enc.conv_out = nn.ModuleList(), None, None
        self.encoder = enc.requires_grad_(True)
        cfg = unet.config
        if hint_widths is not None:
            hint_steps = len(hint_widths) - 1
            self.hint = ConditioningEmbedding(
                control_channels, cfg.base_channels, tuple(hint_widths)
            )
        else:
            self.hint = hint_encoder(control_channels, cfg.base_channels, hint_steps)
        self.hint_steps, self.control_channels = hint_steps, control_channels
        self.hint_widths = None if hint_widths is None else tuple(hint_widths)
        self.zero_convs = nn.ModuleList(zero_conv(c, c) for c in unet.skip_channels)
        mid = cfg.base_channels * cfg.channel_mults[-1]
        self.mid_zero = zero_conv(mid, mid)

    def forward(self, x, t, control, context=None, labels=None, vector=None):
        f = 2**self.hint_steps
        expected = (x.shape[0], self.control_channels, x.shape[2] * f, x.shape[3] * f)
        if tuple(control.shape) != expected:
            raise ValueError(
                f"control must be {list(expected)} for x of shape "
                f"{list(x.shape)}, got {list(control.shape)}"
            )
        enc = self.encoder
        emb = enc.embed(t, labels, vector)
        h = enc.conv_in(x) + self.hint(control)
        outs = [h]
        for layer in enc.down:
            h = (
                enc._run(layer, h, emb, context)
                if isinstance(layer, nn.ModuleList)
                else layer(h)
            )
            outs.append(h)
        h = enc._run(enc.mid, h, emb, context)
        return [z(o) for z, o in zip(self.zero_convs, outs)], self.mid_zero(h)


class ControlledUNet(nn.Module):
    """The frozen UNet steered by a ControlNet: model(x, t, context=..., control=...)
    with the UNet's signature plus control [B, c, H, W] (None: the plain UNet) and
    `scale`, the strength of the control (the residuals are multiplied by it)."""

    def __init__(self, unet: UNet, controlnet: ControlNet, scale: float = 1.0):
        super().__init__()
        self.unet, self.controlnet, self.scale = unet, controlnet, scale
        self.config = unet.config

    def forward(self, x, t, labels=None, context=None, vector=None, control=None):
        if control is None or self.scale == 0:
            return self.unet(x, t, labels, context, vector)
        down, mid = self.controlnet(x, t, control, context, labels, vector)
        return self.unet(
            x,
            t,
            labels,
            context,
            vector,
            down_residuals=[self.scale * d for d in down],
            mid_residual=self.scale * mid,
        )


def layout_masks(scenes, image_size: int | None = None) -> torch.Tensor:
    """The control images: [N, 1, S, S] in [0, 1], how much of each pixel the scene's
    shapes cover (anti-aliased silhouettes, both objects in one channel)."""
    size = image_size or scenes.images.shape[-1]
    m = scene_masks(scenes.objects, scenes.centres, scenes.radii, size)
    return m.sum(1, keepdim=True).clamp(max=1.0)


def drawn_masks(images: torch.Tensor, background, floor: float = 0.1) -> torch.Tensor:
    """bool [B, H, W]: the pixels of images [B, 3, H, W] that are at least about half
    covered by a shape. A pixel's RGB distance from the background, over the largest
    distance in its 5x5 neighbourhood (the full colour of the shape next to it), is
    the covered fraction for an anti-aliased edge; pixels closer than `floor` to the
    background never count."""
    rgb = (images.float().clamp(-1, 1) + 1) / 2
    bg = torch.tensor(background, dtype=rgb.dtype)[None, :, None, None]
    d = (rgb - bg).norm(dim=1)
    local = F.max_pool2d(d[:, None], 5, stride=1, padding=2)[:, 0]
    return (d > HALF * local) & (d > floor)


HALF = 0.45  # "about half covered": edge pixels of exactly 0.5 fall on either side


def mask_iou(images: torch.Tensor, control: torch.Tensor, background) -> torch.Tensor:
    """IoU [B] between the shapes drawn in images [B, 3, S, S] (`drawn_masks`) and the
    control masks [B, 1, S, S] (covered fraction > HALF); 1 when both are empty."""
    drawn, asked = drawn_masks(images, background), control[:, 0] > HALF
    inter = (drawn & asked).flatten(1).sum(1).float()
    union = (drawn | asked).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def controlnet_parameters(net: ControlNet) -> dict:
    """Parameters of each part: the encoder copy, the hint encoder, the zero convs."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    zeros = count(net.zero_convs) + count(net.mid_zero)
    return {
        "encoder copy": count(net.encoder),
        "hint encoder": count(net.hint),
        "zero convolutions": zeros,
    }

"""End-to-end generation: from a prompt to an image.

Part I's pipeline is a label-conditional pixel-space diffusion model on 16x16 captioned
shapes: caption -> labels (data.parse_caption) -> guided DDIM/DDPM sampling
(samplers.sample). Part II's `MiniStableDiffusion` is text -> CLIP token states ->
latent diffusion -> VAE decode; Part III adds text -> prior -> decoder -> upsampler
(unCLIP).
"""

from __future__ import annotations

import torch

from .data import parse_caption
from .samplers import sample

IMAGE_SIZE = 16


def check_labels(labels: torch.Tensor, label_sizes: tuple) -> None:
    """Raise ValueError unless labels is an integer [N, K] prompt with labels[:, k] in
    [0, label_sizes[k]). (The null index label_sizes[k] is for guidance only.)"""
    k = len(label_sizes)
    if not torch.is_tensor(labels) or labels.ndim != 2 or labels.shape[1] != k:
        got = tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__
        raise ValueError(f"labels must be an integer tensor [N, {k}], got {got}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise ValueError(f"labels must be integers (torch.long), got {labels.dtype}")
    sizes = torch.tensor(label_sizes, device=labels.device)
    bad = (labels < 0) | (labels >= sizes)
    if bool(bad.any()):
        row, col = (int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(
            f"labels[{row}, {col}] = {int(labels[row, col])} is not a class: attribute "
            f"{col} needs a value in [0, {label_sizes[col]}) (the index "
            f"{label_sizes[col]} is the null label that guidance uses, not a prompt)"
        )


def _in_chunks(model, rows: int):
    """model(x, t, **kwargs) run on at most `rows` rows at a time, outputs concatenated.

    Rows do not interact in an eval-mode UNet, so the result does not depend on `rows`.
    """

    def run(x, t, **kwargs):
        outs = []
        for i in range(0, x.shape[0], rows):
            part = slice(i, i + rows)
            kw = {k: v[part] if torch.is_tensor(v) else v for k, v in kwargs.items()}
            outs.append(model(x[part], t[part], **kw))
        return torch.cat(outs)

    return run


def generate_shapes(
    model,
    schedule,
    labels,
    *,
    sampler="ddim",
    num_steps=50,
    guidance_scale=3.0,
    prediction_type="eps",
    eta=0.0,
    seed=0,
    batch_size=250,
    progress=False,
):
    """Images [N, 3, 16, 16] for label prompts [N, 4] (integers, labels[:, k] in
    [0, model.config.label_sizes[k])), with classifier-free guidance. `eta` is DDIM's
    stochasticity (0 deterministic, 1 the DDPM variance; ignored by sampler="ddpm").

    All N images are sampled as one batch, so the random numbers depend only on `seed`
    and N: x_T [N, 3, 16, 16] is drawn first from a generator seeded with `seed`, then
    (DDPM only) one [N, 3, 16, 16] noise tensor per step. `batch_size` only caps how
    many prompts one forward pass of the network sees (2 x batch_size rows with
    guidance: each prompt and its null label), to bound memory; the images do not
    depend on it (up to float rounding).
    """
    check_labels(labels, model.config.label_sizes)
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    device = next(model.parameters()).device
    labels = labels.to(device)
    rows = batch_size * (2 if guidance_scale != 1.0 else 1)
    return sample(
        _in_chunks(model, rows),
        schedule,
        (labels.shape[0], 3, IMAGE_SIZE, IMAGE_SIZE),
        sampler=sampler,
        num_steps=num_steps,
        eta=eta,
        model_kwargs={"labels": labels},
        uncond_kwargs={"labels": model.null_labels(labels.shape[0], device)},
        guidance_scale=guidance_scale,
        prediction_type=prediction_type,
        generator=torch.Generator().manual_seed(seed),
        device=device,
        progress=progress,
    ).cpu()


def generate_from_captions(model, schedule, captions: list, **kwargs) -> torch.Tensor:
    """Images [N, 3, 16, 16] for English captions such as "a large red circle in the top
    left"."""
    labels = torch.stack([parse_caption(c) for c in captions])
    return generate_shapes(model, schedule, labels, **kwargs)


class MiniStableDiffusion:
    """Stable Diffusion in miniature (Rombach et al. 2022, Sec. 3.3):

        prompt -> tokenizer -> frozen CLIP text encoder -> token states c [B, L, D]
        z_T ~ N(0, I) [B, 4, 8, 8] -> DDIM with classifier-free guidance, the UNet
        cross-attending to c (the empty caption's states for the unconditional pass)
        -> z_0 / scaling_factor -> VAE decoder -> images [B, 3, 64, 64] in [-1, 1].

    The latents are never clipped (they are not in [-1, 1]; SD's scheduler has
    clip_sample=False), the decoded images are."""

    def __init__(
        self,
        unet,
        vae,
        text_encoder,
        tokenizer,
        schedule,
        prediction_type: str = "eps",
        guidance_scale: float = 3.0,
    ):
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.tokenizer, self.schedule = tokenizer, schedule
        self.prediction_type, self.guidance_scale = prediction_type, guidance_scale

    @classmethod
    def from_pretrained(cls, device=None, directory=None) -> MiniStableDiffusion:
        """The shipped scenes-ldm UNet with the scenes-vae and scenes-clip it was
        trained on (hash-checked)."""
        from . import pretrained
        from .clip import tokenizer_from_manifest

        unet, info = pretrained.load_pretrained("scenes-ldm", device, directory)
        vae, _ = pretrained.load_pretrained("scenes-vae", device, directory)
        text_encoder, clip_info = pretrained.load_pretrained(
            "scenes-clip", device, directory
        )
        return cls(
            unet,
            vae,
            text_encoder,
            tokenizer_from_manifest(clip_info),
            pretrained.schedule_from_manifest(info),
            info["prediction_type"],
            info.get("guidance_scale", 3.0),
        )

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def latent_shape(self) -> tuple:
        """(C, h, w) of one latent."""
        f = self.vae.config.downsample_factor
        size = self.text_encoder.config.image_size
        return (self.vae.config.latent_channels, size // f, size // f)

    @torch.no_grad()
    def encode_prompts(self, prompts) -> torch.Tensor:
        """Text states [B, L, D] for a prompt or a list of prompts ("" = no prompt).
        Raises clip.UnknownWordError for a word the tokenizer does not know."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        tokens = self.tokenizer(prompts).to(self.device)
        return self.text_encoder.text_states(tokens)

    @torch.no_grad()
    def generate_latents(
        self,
        prompts,
        *,
        num_steps: int = 50,
        guidance_scale: float | None = None,
        eta: float = 0.0,
        seed: int = 0,
        x_T: torch.Tensor | None = None,
        batch_size: int = 250,
        progress: bool = False,
        return_trajectory: bool = False,
    ):
        """Scaled latents [B, 4, 8, 8] (or (latents, trajectory)). As in
        `generate_shapes`, x_T is one [B, 4, 8, 8] draw from a generator seeded with
        `seed`, so the images depend on the seed and B, not on batch_size."""
        context = self.encode_prompts(prompts)
        n = context.shape[0]
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        rows = batch_size * (2 if scale != 1.0 else 1)
        return sample(
            _in_chunks(self.unet, rows),
            self.schedule,
            (n, *self.latent_shape),
            sampler="ddim",
            num_steps=num_steps,
            eta=eta,
            model_kwargs={"context": context},
            uncond_kwargs={"context": self.encode_prompts([""] * n)},
            guidance_scale=scale,
            prediction_type=self.prediction_type,
            clip_sample=False,
            generator=torch.Generator().manual_seed(seed),
            device=self.device,
            x_T=x_T,
            progress=progress,
            return_trajectory=return_trajectory,
        )

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
        """Images [B, 3, 64, 64] in [-1, 1] (on the CPU) from scaled latents."""
        return torch.cat(
            [self.vae.decode_scaled(z).cpu() for z in latents.split(batch_size)]
        )

    def __call__(self, prompts, **kwargs) -> torch.Tensor:
        """Images [B, 3, 64, 64] in [-1, 1] for the prompts (see generate_latents)."""
        return self.decode(self.generate_latents(prompts, **kwargs))

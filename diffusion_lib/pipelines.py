"""End-to-end generation: from a prompt to an image.

Part I's pipeline is a label-conditional pixel-space diffusion model on 16x16 captioned
shapes: caption -> labels (data.parse_caption) -> guided DDIM/DDPM sampling
(samplers.sample). Part II's `MiniStableDiffusion` is text -> CLIP token states ->
latent diffusion -> VAE decode; Part III adds text -> prior -> decoder -> upsampler
(unCLIP).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .controlnet import ControlledUNet
from .data import IMAGE_SIZE, parse_caption
from .forward import q_sample
from .loaders import StableDiffusionLoaderMixin
from .prior import pick_closest
from .samplers import DDIMSampler, make_sampler, sample
from .unclip import enlarge

# Each stage of a pipeline draws its noise from its own generator, seeded from the
# call's `seed` plus the stage's offset: one seed fixes a whole image, and a stage run
# alone (a chapter rebuilding a pipeline by hand, a measurement of one stage) gets the
# same noise from stage_generator(seed, stage).
STAGE_SEEDS = {
    "latents": 0,  # the mini SD's initial latents (and DDIM's noise with eta > 0)
    "prior": 0,  # the mini DALL-E 2's prior
    "decoder": 1,  # its decoder, at 32x32
    "upsampler": 2,  # its upsampler, at 64x64
    "img2img noise": 3,  # the noise image-to-image adds to the source's latents
}


def stage_generator(seed: int, stage: str) -> torch.Generator:
    """The CPU generator of pipeline stage `stage` (STAGE_SEEDS) in a call with
    `seed`."""
    if stage not in STAGE_SEEDS:
        raise ValueError(
            f"unknown stage {stage!r}; expected one of {list(STAGE_SEEDS)}"
        )
    return torch.Generator().manual_seed(seed + STAGE_SEEDS[stage])


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
    # eta is DDIM's alone: DDPM's variance is fixed by its variance_type
    options = {"eta": eta} if sampler == "ddim" else {}
    return sample(
        _in_chunks(model, rows),
        make_sampler(sampler, schedule, prediction_type=prediction_type, **options),
        (labels.shape[0], 3, IMAGE_SIZE, IMAGE_SIZE),
        num_steps=num_steps,
        model_kwargs={"labels": labels},
        uncond_kwargs={"labels": model.null_labels(labels.shape[0], device)},
        guidance_scale=guidance_scale,
        generator=torch.Generator().manual_seed(seed),
        device=device,
        progress=progress,
    ).x0.cpu()


def generate_from_captions(model, schedule, captions: list, **kwargs) -> torch.Tensor:
    """Images [N, 3, 16, 16] for English captions such as "a large red circle in the top
    left"."""
    labels = torch.stack([parse_caption(c) for c in captions])
    return generate_shapes(model, schedule, labels, **kwargs)


class MiniStableDiffusion(StableDiffusionLoaderMixin):
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
        self.controlnet = None  # a controlnet.ControlNet: see load_controlnet

    @classmethod
    def from_pretrained(
        cls, device=None, directory=None, step: int | None = None
    ) -> MiniStableDiffusion:
        """The shipped scenes-ldm UNet with the scenes-vae and scenes-clip it was
        trained on (hash-checked); with `step`, the UNet its run kept at that step
        (chapter 10's training budgets)."""
        from . import pretrained
        from .clip import tokenizer_from_manifest

        unet, info = pretrained.load_pretrained("scenes-ldm", device, directory, step)
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
        keep_trajectory: bool = False,
        control: torch.Tensor | None = None,
        control_scale: float = 1.0,
        start_step: int | None = None,
    ):
        """A SampleOutput: scaled latents x0 [B, 4, 8, 8] (and, with keep_trajectory,
        every z_t on the way). As in
        `generate_shapes`, x_T is one [B, 4, 8, 8] draw from a generator seeded with
        `seed`, so the images depend on the seed and B, not on batch_size.
        control [B, 1, 64, 64]: a control image for `self.controlnet` (chapter 13),
        given to the guided and the unguided pass alike, scaled by control_scale.
        start_step: start there from x_T, a noised latent (image-to-image)."""
        context = self.encode_prompts(prompts)
        n = context.shape[0]
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        rows = batch_size * (2 if scale != 1.0 else 1)
        model, extra = self.unet, {}
        if control is not None:
            if self.controlnet is None:
                raise ValueError(
                    "this pipeline has no controlnet: set pipe.controlnet "
                    "(see diffusion_lib.controlnet)"
                )
            model = ControlledUNet(self.unet, self.controlnet, control_scale)
            extra = {"control": control.to(self.device)}
        sampler = DDIMSampler(
            self.schedule,
            eta=eta,
            prediction_type=self.prediction_type,
            clip_sample=False,  # latents have no [-1, 1] range
        )
        return sample(
            _in_chunks(model, rows),
            sampler,
            (n, *self.latent_shape),
            num_steps=num_steps,
            model_kwargs={"context": context, **extra},
            uncond_kwargs={"context": self.encode_prompts([""] * n), **extra},
            guidance_scale=scale,
            generator=stage_generator(seed, "latents"),
            device=self.device,
            x_T=x_T,
            progress=progress,
            keep_trajectory=keep_trajectory,
            start_step=start_step,
        )

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
        """Images [B, 3, 64, 64] in [-1, 1] (on the CPU) from scaled latents."""
        return torch.cat(
            [self.vae.decode_scaled(z).cpu() for z in latents.split(batch_size)]
        )

    def __call__(self, prompts, **kwargs) -> torch.Tensor:
        """Images [B, 3, 64, 64] in [-1, 1] for the prompts (see generate_latents)."""
        return self.decode(self.generate_latents(prompts, **kwargs).x0)

    @torch.no_grad()
    def img2img(
        self,
        images,
        prompts,
        strength: float = 0.6,
        *,
        num_steps: int = 50,
        seed: int = 0,
        **kwargs,
    ) -> torch.Tensor:
        """Image-to-image (SDEdit, Meng et al. 2022): encode images [B, 3, 64, 64],
        noise the latents to timestep t = round(strength * (T - 1)) and denoise them
        with the prompts over round(num_steps * strength) DDIM steps (as diffusers'
        img2img pipeline does). strength near 0 keeps the source, 1 ignores it."""
        if not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        z0 = self.vae.encode_scaled(images.to(self.device))
        t = round(strength * (self.schedule.num_timesteps - 1))
        gen = stage_generator(seed, "img2img noise")
        noise = torch.randn(z0.shape, generator=gen).to(self.device)
        t_batch = torch.full((z0.shape[0],), t, device=self.device)
        x_t = q_sample(self.schedule, z0, t_batch, noise)
        steps = max(1, round(num_steps * strength))
        latents = self.generate_latents(
            prompts, num_steps=steps, seed=seed, x_T=x_t, start_step=t, **kwargs
        )
        return self.decode(latents.x0)


def slerp(a: torch.Tensor, b: torch.Tensor, weight: float) -> torch.Tensor:
    """Spherical interpolation between unit vectors a, b [B, D] (weight 0 -> a,
    1 -> b), as unCLIP interpolates CLIP image embeddings (Ramesh et al. 2022, Sec.
    3.2)."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    theta = torch.arccos((a * b).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    return (
        torch.sin((1 - weight) * theta) * a + torch.sin(weight * theta) * b
    ) / torch.sin(theta)


EMBEDDINGS = ("prior", "text")  # what the decoder is given in `MiniDALLE2.__call__`


class MiniDALLE2:
    """DALL-E 2 / unCLIP in miniature (Ramesh et al. 2022):

        prompt -> tokenizer -> frozen CLIP text encoder -> (token states, text
        embedding) -> diffusion prior (DDIM, guidance; best of two candidates by dot
        product with the text embedding) -> CLIP image embedding e [B, D]
        -> decoder: pixel DDIM at 32x32 with guidance (e zeroed for the unconditional
        pass) -> upsampler: DDIM at 64x64 conditioned on the 32x32 image, no guidance
        -> images [B, 3, 64, 64] in [-1, 1].

    Image variations and interpolations skip the prior: they start from the CLIP image
    embedding of real images. Each stage is a method that measurement code can call
    alone (prior_embeddings, decoder_images, upsample), so a pipeline may be built
    with only the components one stage needs: MiniDALLE2(clip_model=..., tokenizer=...)
    encodes prompts and images and nothing else."""

    def __init__(
        self,
        *,
        prior=None,
        decoder=None,
        upsampler=None,
        clip_model=None,
        tokenizer=None,
        prior_schedule=None,
        decoder_schedule=None,
        upsampler_schedule=None,
        prior_guidance=2.0,
        decoder_guidance=3.0,
        prior_steps=25,
        upsampler_steps=10,
        candidates=2,
        upsampler_start=None,
        upsampler_prediction="eps",
        decoder_prediction="eps",
    ):
        self.prior, self.decoder, self.upsampler = prior, decoder, upsampler
        self.clip, self.tokenizer = clip_model, tokenizer
        self.prior_schedule = prior_schedule
        self.decoder_schedule = decoder_schedule
        self.upsampler_schedule = upsampler_schedule
        self.prior_guidance, self.guidance_scale = prior_guidance, decoder_guidance
        self.prior_steps, self.upsampler_steps = prior_steps, upsampler_steps
        self.candidates = candidates
        # the upsampler's first timestep (None: the last one, from pure noise)
        self.upsampler_start = upsampler_start
        self.upsampler_prediction = upsampler_prediction  # what it predicts
        self.decoder_prediction = decoder_prediction  # ("eps" or "v")

    @property
    def text_encoder(self):
        """The CLIP model (the same attribute name as MiniStableDiffusion's, so that
        the two pipelines are measured by the same code)."""
        return self.clip

    @classmethod
    def from_pretrained(
        cls, device=None, directory=None, steps: dict | None = None, twins=None
    ) -> MiniDALLE2:
        """The shipped scenes-prior, scenes-decoder and scenes-upsampler with the
        scenes-clip they were trained on (hash-checked). steps {"prior" | "decoder" |
        "upsampler": step}: the networks their runs kept at those steps (chapter 10's
        budgets); twins {part: twin}: a twin trained beside it (e.g. {"decoder":
        "text"}, the decoder on text embeddings), at the step given in steps."""
        from . import pretrained
        from .clip import tokenizer_from_manifest

        steps, twins = dict(steps or {}), dict(twins or {})
        parts = ("prior", "decoder", "upsampler", "clip")
        unknown = (set(steps) | set(twins)) - set(parts[:3])
        if unknown or not set(twins) <= set(steps):
            raise ValueError(
                f"steps and twins name parts among {parts[:3]} (a twin with its step); "
                f"got steps {steps}, twins {twins}"
            )
        models, infos = {}, {}
        for name in parts:
            models[name], infos[name] = pretrained.load_pretrained(
                f"scenes-{name}", device, directory, steps.get(name), twins.get(name)
            )
        for name in ("prior", "decoder"):
            if infos[name]["clip_sha256"] != infos["clip"]["sha256"]:
                raise ValueError(
                    f"scenes-{name} was trained on another scenes-clip (sha256 "
                    f"{infos[name]['clip_sha256'][:12]}...); rebuild it with "
                    f"`python -m diffusion_lib.recipes scenes-{name}`"
                )
        return cls(
            prior=models["prior"],
            decoder=models["decoder"],
            upsampler=models["upsampler"],
            clip_model=models["clip"],
            tokenizer=tokenizer_from_manifest(infos["clip"]),
            prior_schedule=pretrained.schedule_from_manifest(infos["prior"]),
            decoder_schedule=pretrained.schedule_from_manifest(infos["decoder"]),
            upsampler_schedule=pretrained.schedule_from_manifest(infos["upsampler"]),
            prior_guidance=infos["prior"].get("guidance_scale", 2.0),
            decoder_guidance=infos["decoder"].get("guidance_scale", 3.0),
            upsampler_steps=infos["upsampler"].get("sampling_steps", 10),
            upsampler_start=infos["upsampler"].get("sampling_start"),
            upsampler_prediction=infos["upsampler"].get("prediction_type", "eps"),
            decoder_prediction=infos["decoder"].get("prediction_type", "eps"),
        )

    @property
    def device(self) -> torch.device:
        """The device of the pipeline's models (a pipeline may hold only some of
        them, e.g. for measuring one component)."""
        models = (self.decoder, self.prior, self.upsampler, self.clip)
        return next(next(m.parameters()).device for m in models if m is not None)

    @torch.no_grad()
    def encode_prompts(self, prompts) -> dict:
        """{"text_states" [B, L, W], "text_embed" [B, D] (unit), "text_mask" [B, L]}
        for a prompt or a list of prompts ("" = no prompt)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        tokens = self.tokenizer(prompts).to(self.device)
        states, embed = self.clip.text(tokens)
        mask = tokens != self.tokenizer.pad_id
        return {
            "text_states": states,
            "text_embed": F.normalize(embed, dim=-1),
            "text_mask": mask,
        }

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Unit CLIP image embeddings [B, D] of images [B, 3, 64, 64] in [-1, 1]."""
        return self.clip.encode_image(images.to(self.device))

    @torch.no_grad()
    def prior_embeddings(
        self,
        prompts,
        *,
        num_steps=None,
        guidance_scale=None,
        candidates=None,
        seed=0,
        generator=None,
    ) -> torch.Tensor:
        """Step 1. Unit image embeddings [B, D] sampled by the prior: `candidates`
        draws per prompt, keeping the one closest to the prompt's text embedding.
        generator: the noise's (default: stage_generator(seed, "prior"))."""
        cond = self.encode_prompts(prompts)
        b = cond["text_embed"].shape[0]
        k = self.candidates if candidates is None else candidates
        if k < 1:
            raise ValueError(f"candidates must be >= 1, got {k}")
        null = self.encode_prompts([""] * b)
        repeat = lambda d: {n: v.repeat(k, *[1] * (v.ndim - 1)) for n, v in d.items()}  # noqa: E731
        # the prior predicts the (standardised) embedding itself, unclipped
        sampler = DDIMSampler(
            self.prior_schedule, prediction_type="x0", clip_sample=False
        )
        z = sample(
            self.prior,
            sampler,
            (k * b, self.prior.config.embed_dim),
            num_steps=num_steps or self.prior_steps,
            model_kwargs=repeat(cond),
            uncond_kwargs=repeat(null),
            guidance_scale=self.prior_guidance
            if guidance_scale is None
            else guidance_scale,
            generator=generator or stage_generator(seed, "prior"),
            device=self.device,
        ).x0
        embeds = self.prior.unstandardise(z).unflatten(0, (k, b))  # [k, B, D]
        return pick_closest(embeds, cond["text_embed"])

    def decoder_conditions(self, image_embed: torch.Tensor, captions=None):
        """The decoder's keyword arguments, conditioned and null (for guidance): the
        image embedding (null: zeros) and, for a decoder with the paper's text
        conditioning, the captions' CLIP embedding, token states and mask (null: the
        empty caption's; captions None: every caption empty, as for variations)."""
        e = image_embed.to(self.device)
        cond, null = {"image_embed": e}, {"image_embed": torch.zeros_like(e)}
        if self.decoder.config.text_conditioning:
            captions = [""] * len(e) if captions is None else list(captions)
            if len(captions) != len(e):
                raise ValueError(
                    f"one caption per embedding: got {len(captions)} captions for "
                    f"{len(e)} embeddings"
                )
            cond.update(self.encode_prompts(captions))
            null.update(self.encode_prompts([""] * len(e)))
        return cond, null

    @torch.no_grad()
    def decoder_images(
        self,
        image_embed: torch.Tensor,
        *,
        captions=None,
        num_steps=50,
        guidance_scale=None,
        seed=0,
        generator=None,
        batch_size=250,
        progress=False,
    ) -> torch.Tensor:
        """Step 2. Images [B, 3, 32, 32] in [-1, 1] from unit image embeddings [B, D]
        (and their captions, for a decoder that reads them: decoder_conditions) by the
        decoder's guided DDIM. generator: the noise's (default: stage_generator(seed,
        "decoder"))."""
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        cond, null = self.decoder_conditions(image_embed, captions)
        size = self.decoder.config.image_size
        return sample(
            _in_chunks(self.decoder, batch_size * 2),
            DDIMSampler(self.decoder_schedule, prediction_type=self.decoder_prediction),
            (len(image_embed), 3, size, size),
            num_steps=num_steps,
            model_kwargs=cond,
            uncond_kwargs=null,
            guidance_scale=scale,
            generator=generator or stage_generator(seed, "decoder"),
            device=self.device,
            progress=progress,
        ).x0

    @torch.no_grad()
    def upsample(
        self,
        low_res: torch.Tensor,
        *,
        num_steps=None,
        seed=0,
        generator=None,
        factor=2,
        batch_size=250,
        start_step=None,
    ) -> torch.Tensor:
        """Step 3. Images [B, 3, f H, f W] from low-resolution images [B, 3, H, W] (no
        guidance: the upsampler is not conditioned on the prompt). The reverse process
        starts at `start_step` (default: the pipeline's upsampler_start) from the
        enlarged low-resolution image noised to that step (SDEdit), or from pure noise
        when it is the last timestep. generator: the noise's (default:
        stage_generator(seed, "upsampler"))."""
        low = low_res.to(self.device)
        shape = (low.shape[0], 3, low.shape[2] * factor, low.shape[3] * factor)
        cond = enlarge(low, shape[-1])
        gen = generator or stage_generator(seed, "upsampler")
        start = self.upsampler_start if start_step is None else start_step
        x_T = None
        if start is not None and start < self.upsampler_schedule.num_timesteps - 1:
            t = torch.full((shape[0],), start, device=self.device, dtype=torch.long)
            noise = torch.randn(shape, generator=gen).to(self.device)
            x_T = q_sample(self.upsampler_schedule, cond, t, noise)
        else:
            start = None
        return sample(
            _in_chunks(self.upsampler, batch_size),
            DDIMSampler(
                self.upsampler_schedule, prediction_type=self.upsampler_prediction
            ),
            shape,
            num_steps=num_steps or self.upsampler_steps,
            model_kwargs={"low_res": cond},
            generator=gen,
            device=self.device,
            x_T=x_T,
            start_step=start,
        ).x0.cpu()

    def from_embeddings(
        self,
        image_embed,
        *,
        captions=None,
        num_steps=50,
        guidance_scale=None,
        seed=0,
        progress=False,
    ) -> torch.Tensor:
        """Steps 2 and 3, decoder and upsampler: images [B, 3, 64, 64] from image
        embeddings (and captions, see decoder_conditions)."""
        low = self.decoder_images(
            image_embed,
            captions=captions,
            num_steps=num_steps,
            seed=seed,
            guidance_scale=guidance_scale,
            progress=progress,
        )
        return self.upsample(low, seed=seed)

    def __call__(
        self,
        prompts,
        *,
        num_steps=50,
        guidance_scale=None,
        seed=0,
        embedding="prior",
        progress=False,
    ) -> torch.Tensor:
        """Images [B, 3, 64, 64] in [-1, 1] for the prompts: 1. the prior samples an
        image embedding per prompt (embedding="prior", unCLIP; "text" feeds the text
        embedding to the decoder instead, the paper's ablation); 2. the decoder draws
        a 32x32 image of it; 3. the upsampler enlarges that to 64x64. Each step's
        noise comes from stage_generator(seed, step)."""
        if embedding not in EMBEDDINGS:
            raise ValueError(
                f"unknown embedding {embedding!r}; expected one of {EMBEDDINGS}"
            )
        if embedding == "prior":
            e = self.prior_embeddings(prompts, seed=seed)
        else:
            e = self.encode_prompts(prompts)["text_embed"]
        return self.from_embeddings(
            e,
            captions=[prompts] if isinstance(prompts, str) else prompts,
            num_steps=num_steps,
            seed=seed,
            guidance_scale=guidance_scale,
            progress=progress,
        )

    def variations(self, images: torch.Tensor, n: int = 4, **kwargs) -> torch.Tensor:
        """n variations of each image [B, 3, 64, 64]: [B * n, 3, 64, 64], grouped by
        source (decoded from each image's CLIP embedding with different noise)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        e = self.encode_images(images).repeat_interleave(n, 0)
        return self.from_embeddings(e, **kwargs)

    def interpolate(self, image_a, image_b, steps: int = 5, **kwargs) -> torch.Tensor:
        """Images [steps, 3, 64, 64] decoded from slerp between the CLIP embeddings of
        two images [1, 3, 64, 64] (one noise draw for all, as in the paper)."""
        if steps < 2:
            raise ValueError(f"steps must be >= 2, got {steps}")
        a, b = self.encode_images(image_a), self.encode_images(image_b)
        e = torch.cat([slerp(a, b, w) for w in torch.linspace(0, 1, steps).tolist()])
        # one at a time, each with the same seed: the same noise for every step
        return torch.cat(
            [self.from_embeddings(e[i : i + 1], **kwargs) for i in range(steps)]
        )


@torch.no_grad()
def encode_scenes(vae, text_encoder, tokenizer, scenes, batch_size=500):
    """(scaled latents [N, 4, 8, 8], text states [N, L, D]) of scenes and captions:
    what the latent UNet trains on (computed once: both encoders are frozen)."""
    latents, states = [], []
    device = next(vae.parameters()).device  # computed (and returned) where the VAE is
    for i in range(0, len(scenes), batch_size):
        part = slice(i, i + batch_size)
        latents.append(vae.encode_scaled(scenes.images[part].to(device)))
        tokens = tokenizer(scenes.captions[part]).to(device)
        states.append(text_encoder.text_states(tokens))
    return torch.cat(latents), torch.cat(states)

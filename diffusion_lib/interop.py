"""The course's mini Stable Diffusion inside 🤗 diffusers, and the real Stable Diffusion
1.5 for readers who are online.

diffusers' `StableDiffusionPipeline` asks little of its parts: a `vae` with
`config.block_out_channels`, `config.scaling_factor` and `decode(z, return_dict=False)`;
a `unet` with `config.in_channels`, `config.sample_size`, `config.time_cond_proj_dim`,
called as `unet(latents, t, encoder_hidden_states=..., return_dict=False)`; a
scheduler. `CourseUNet` and `CourseVAE` are thin adapters (diffusers `ModelMixin` +
`ConfigMixin`) around the course's own modules, so that

* `to_diffusers(pipe)` runs the trained mini SD in `StableDiffusionPipeline`, with
  diffusers' `DDIMScheduler` (trailing spacing, no clipping: the library's sampler);
* `save_diffusers(pipe, folder)` writes diffusers' folder format (model_index.json,
  unet/, vae/, scheduler/) and `load_diffusers(folder)` reads it back offline with
  `StableDiffusionPipeline.from_pretrained`;
* `diffusers_generate` feeds the course CLIP's token states as `prompt_embeds` (the
  pipeline's own text encoder slot stays empty, as diffusers allows).

`load_sd15` loads the real Stable Diffusion 1.5 (the maintained copy of the withdrawn
`runwayml/stable-diffusion-v1-5`, at a pinned revision); it needs the Internet (or a
local copy) and, in practice, a GPU.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from diffusers.utils import logging as diffusers_logging

from .setup import headless
from .unet import UNet, UNetConfig
from .vae import AutoencoderKL, VAEConfig

SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD15_REVISION = "451f4fe16113bff5a5d2269ed5ad43b0592e9a14"


class CourseUNet(ModelMixin, ConfigMixin):
    """diffusion_lib.unet.UNet with diffusers' UNet2DConditionModel call signature."""

    @register_to_config
    def __init__(
        self,
        unet_config: dict | None = None,
        in_channels: int = 4,
        sample_size: int = 8,
        time_cond_proj_dim: int | None = None,
    ):
        super().__init__()
        self.model = UNet(UNetConfig.from_dict(unet_config or {}))

    def forward(
        self,
        sample: torch.Tensor,
        timestep,
        encoder_hidden_states: torch.Tensor,
        return_dict: bool = True,
        timestep_cond=None,
        cross_attention_kwargs=None,
        added_cond_kwargs=None,
        **unsupported,
    ):
        if unsupported or timestep_cond is not None or cross_attention_kwargs:
            raise ValueError(
                "CourseUNet takes (sample, timestep, encoder_hidden_states) only; got "
                f"{sorted(unsupported) or 'timestep_cond / cross_attention_kwargs'}"
            )
        t = torch.as_tensor(timestep, device=sample.device).long().reshape(-1)
        t = t.expand(sample.shape[0])
        out = self.model(sample, t, context=encoder_hidden_states)
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)


class CourseVAE(ModelMixin, ConfigMixin):
    """diffusion_lib.vae.AutoencoderKL with diffusers' AutoencoderKL interface."""

    @register_to_config
    def __init__(
        self,
        vae_config: dict | None = None,
        block_out_channels: tuple = (16, 32, 64, 64),
        latent_channels: int = 4,
        scaling_factor: float = 1.0,
    ):
        super().__init__()
        self.model = AutoencoderKL(VAEConfig.from_dict(vae_config or {}))

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        posterior = self.model.encode(x)  # has sample(generator) and mode()
        return (
            AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)
        )

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        x = self.model.decode(z)
        return DecoderOutput(sample=x) if return_dict else (x,)


def course_scheduler(schedule_info: dict) -> DDIMScheduler:
    """diffusers' DDIM with the library's defaults: the same betas, trailing timestep
    spacing, alpha_bar = 1 after the last step, no clipping (latents)."""
    # diffusers' name for each library schedule, with the library's beta range
    names = {
        "cosine": ("squaredcos_cap_v2", {}),
        "linear": ("linear", {"beta_start": 1e-4, "beta_end": 0.02}),
        "scaled_linear": ("scaled_linear", {"beta_start": 0.00085, "beta_end": 0.012}),
    }
    if schedule_info["kind"] not in names:
        raise ValueError(
            f"schedule {schedule_info['kind']!r} has no diffusers DDIM equivalent "
            f"here; expected one of {sorted(names)}"
        )
    beta_schedule, betas = names[schedule_info["kind"]]
    return DDIMScheduler(
        num_train_timesteps=schedule_info["num_timesteps"],
        beta_schedule=beta_schedule,
        **betas,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
        clip_sample=False,
        prediction_type="epsilon",
        steps_offset=1,  # what diffusers expects; "trailing" spacing ignores it
    )


def to_diffusers(pipe) -> StableDiffusionPipeline:
    """A diffusers StableDiffusionPipeline around the trained parts of a
    pipelines.MiniStableDiffusion (same weights, no copy of the text encoder)."""
    if pipe.prediction_type != "eps":
        raise ValueError("only eps-prediction models are wired to diffusers' DDIM here")
    vcfg, ucfg = pipe.vae.config, pipe.unet.config
    unet = CourseUNet(ucfg.to_dict(), ucfg.in_channels, pipe.latent_shape[-1])
    unet.model.load_state_dict(pipe.unet.state_dict())
    vae = CourseVAE(
        vcfg.to_dict(), tuple(vcfg.channels), vcfg.latent_channels, vcfg.scaling_factor
    )
    vae.model.load_state_dict(pipe.vae.state_dict())
    schedule = {
        "kind": pipe.schedule.kind,
        "num_timesteps": pipe.schedule.num_timesteps,
    }
    sd = StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=None,
        tokenizer=None,
        unet=unet.eval(),
        scheduler=course_scheduler(schedule),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    sd.set_progress_bar_config(disable=True)
    return sd.to(pipe.device)


def save_diffusers(pipe, folder: str | Path) -> Path:
    """Write the mini SD in diffusers' folder format (safetensors)."""
    to_diffusers(pipe).save_pretrained(str(folder), safe_serialization=True)
    return Path(folder)


def load_diffusers(folder: str | Path) -> StableDiffusionPipeline:
    """StableDiffusionPipeline.from_pretrained on a folder written by save_diffusers
    (offline: local files only). A book build shows no loading bar (an ipywidget whose
    JavaScript a static page would fetch from a CDN)."""
    quiet = headless() and diffusers_logging.is_progress_bar_enabled()
    if quiet:
        diffusers_logging.disable_progress_bar()
    try:
        sd = StableDiffusionPipeline.from_pretrained(
            str(folder),
            text_encoder=None,
            tokenizer=None,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            local_files_only=True,
        )
    finally:
        if quiet:
            diffusers_logging.enable_progress_bar()
    sd.set_progress_bar_config(disable=True)
    return sd


@torch.no_grad()
def diffusers_generate(
    sd: StableDiffusionPipeline,
    course_pipe,
    prompts,
    num_steps: int = 50,
    guidance_scale: float | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Images [B, 3, H, W] in [-1, 1] from diffusers for the same prompts, seed and
    scheduler as `course_pipe(prompts, ...)`: the same x_T, the course CLIP's token
    states as prompt_embeds and the empty caption's as negative_prompt_embeds.
    (diffusers guides only when guidance_scale > 1.)

    num_steps must divide the number of training timesteps T: diffusers' DDIMScheduler
    steps from t to t - T // num_steps, which is the next "trailing" timestep (the
    course's, and diffusers' own timestep list) only then; otherwise the two samplers
    differ (by about 0.02 at 3 steps), and this function refuses."""
    total = course_pipe.schedule.num_timesteps
    if total % num_steps:
        divisors = [k for k in range(1, 101) if total % k == 0]
        raise ValueError(
            f"num_steps={num_steps} does not divide the {total} training timesteps: "
            f"diffusers' DDIM would step from t to t - {total // num_steps}, not to "
            f"the course's next trailing timestep; use one of {divisors}"
        )
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    scale = course_pipe.guidance_scale if guidance_scale is None else guidance_scale
    n, device = len(prompts), course_pipe.device
    x_T = torch.randn(
        (n, *course_pipe.latent_shape), generator=torch.Generator().manual_seed(seed)
    )
    out = sd(
        prompt_embeds=course_pipe.encode_prompts(prompts),
        negative_prompt_embeds=course_pipe.encode_prompts([""] * n),
        latents=x_T.to(device),
        num_inference_steps=num_steps,
        guidance_scale=scale,
        output_type="pt",
        height=course_pipe.text_encoder.config.image_size,
        width=course_pipe.text_encoder.config.image_size,
    )
    return out.images.cpu() * 2 - 1


def load_sd15(
    device: str = "cuda",
    dtype: torch.dtype = torch.float16,
    repo: str = SD15_REPO,
    revision: str | None = SD15_REVISION,
    local_files_only: bool = False,
) -> StableDiffusionPipeline:
    """The real Stable Diffusion 1.5 (about 2 GB in float16), pinned to `revision`.
    `repo` may also be a local folder in diffusers' format (then no revision). Raises
    a clear error when the weights can be neither found locally nor downloaded."""
    is_folder = Path(repo).is_dir()
    try:
        sd = StableDiffusionPipeline.from_pretrained(
            repo,
            revision=None if is_folder else revision,
            dtype=dtype,
            local_files_only=local_files_only or is_folder,
            safety_checker=None,
            requires_safety_checker=False,
        )
    except (OSError, ValueError) as err:
        raise RuntimeError(
            f"could not load Stable Diffusion 1.5 from {repo!r} (revision {revision}): "
            f"{err}. This needs the Internet (about 2 GB) or a local copy; the rest of "
            "the course runs offline on its own mini SD."
        ) from err
    return sd.to(device)


def load_adapters(
    sd: StableDiffusionPipeline,
    lora=None,
    lora_scale: float = 1.0,
    embedding=None,
    token: str | None = None,
    adapter_name: str = "course",
) -> StableDiffusionPipeline:
    """Chapter 11 on the real model: diffusers' native adapter loading.

    lora: a LoRA in diffusers' or kohya's format (a file, a folder, a Hub id or a state
    dict), loaded with `load_lora_weights` and weighted by lora_scale with
    `set_adapters`; embedding: a textual-inversion embedding (file, Hub id, or a
    {token: tensor} dict) loaded with `load_textual_inversion` under `token`. Returns
    the pipeline (changed in place)."""
    if lora is None and embedding is None:
        raise ValueError("pass a lora, an embedding, or both")
    if lora is not None:
        sd.load_lora_weights(lora, adapter_name=adapter_name)
        sd.set_adapters([adapter_name], adapter_weights=[lora_scale])
    if embedding is not None:
        if token is None and not isinstance(embedding, dict):
            raise ValueError(
                "name the token the embedding stands for, e.g. '<cat-toy>'"
            )
        sd.load_textual_inversion(embedding, token=token)
    return sd


def sd15_editors(sd: StableDiffusionPipeline) -> tuple:
    """Chapter 12 on the real model: (image-to-image, inpainting) pipelines that share
    `sd`'s components (`from_pipe`: no second download). With SD 1.5's own 4-channel
    UNet, diffusers' inpainting pipeline blends the known region into the latents at
    every step (training-free, like RePaint without resampling); a 9-channel UNet such
    as stable-diffusion-inpainting's is the mask-conditioned kind."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline

    return (
        StableDiffusionImg2ImgPipeline.from_pipe(sd),
        StableDiffusionInpaintPipeline.from_pipe(sd),
    )


SD15_CONTROLNET = "lllyasviel/sd-controlnet-canny"  # edges (e.g. a layout's outlines)


def sd15_with_controlnet(sd: StableDiffusionPipeline, controlnet=SD15_CONTROLNET):
    """Chapter 13 on the real model: a StableDiffusionControlNetPipeline sharing `sd`'s
    components, with `controlnet` (a Hub id or a diffusers ControlNetModel, e.g.
    `ControlNetModel.from_unet(sd.unet)`, the same copy-and-zero-convolutions start as
    the course's)."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    if isinstance(controlnet, str):
        controlnet = ControlNetModel.from_pretrained(controlnet, dtype=sd.unet.dtype)
    controlnet = controlnet.to(device=sd.device, dtype=sd.unet.dtype)
    return StableDiffusionControlNetPipeline.from_pipe(sd, controlnet=controlnet)


def outlines(mask: torch.Tensor, width: int = 1) -> torch.Tensor:
    """The edges of masks [B, 1, H, W] in [0, 1] (a pixel inside whose neighbourhood
    leaves the mask), as 3-channel images in [0, 1]: a canny-like control image."""
    inside = mask > 0.5
    eroded = -torch.nn.functional.max_pool2d(-inside.float(), 2 * width + 1, 1, width)
    return (inside.float() - eroded).clamp(0, 1).repeat(1, 3, 1, 1)

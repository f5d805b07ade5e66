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

from . import convert
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


# the library's prediction types by diffusers' names
PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


def course_scheduler(
    schedule_info: dict, prediction_type: str = "eps", clip_sample: bool = False
) -> DDIMScheduler:
    """diffusers' DDIM with the library's defaults: the same betas, trailing timestep
    spacing, alpha_bar = 1 after the last step; `prediction_type` (the library's name)
    and clipping x0_hat to [-1, 1] as the library's DDIMSampler is set up (pixels:
    clipped; latents and embeddings: not)."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"unknown prediction_type {prediction_type!r}; expected one of "
            f"{sorted(PREDICTION_TYPES)}"
        )
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
        clip_sample=clip_sample,
        clip_sample_range=1.0,
        prediction_type=PREDICTION_TYPES[prediction_type],
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
def check_ddim_steps(num_steps: int, total: int, what: str = "num_steps") -> None:
    """ValueError unless num_steps divides the `total` training timesteps: diffusers'
    DDIMScheduler steps from t to t - total // num_steps, which is the next "trailing"
    timestep (the course's, and diffusers' own timestep list) only then."""
    if total % num_steps:
        divisors = [k for k in range(1, 101) if total % k == 0]
        raise ValueError(
            f"{what}={num_steps} does not divide the {total} training timesteps: "
            f"diffusers' DDIM would step from t to t - {total // num_steps}, not to "
            f"the course's next trailing timestep; use one of {divisors}"
        )


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
    check_ddim_steps(num_steps, course_pipe.schedule.num_timesteps)
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


# ------------------------------------------------- the mini SD as an ordinary SD


def diffusers_unet(unet, sample_size: int):
    """The course UNet as diffusers' UNet2DConditionModel (same weights, renamed)."""
    from diffusers import UNet2DConditionModel

    model = UNet2DConditionModel(**convert.unet_config(unet.config, sample_size))
    return _renamed_into(model, unet, convert.unet_key_map(unet.config), "UNet")


def _renamed_into(model, ours, keys: dict, what: str):
    """`model` (a diffusers module) loaded with the weights of `ours` renamed by
    `keys`, on ours' device, in eval mode; every key must match, shapes too."""
    state = convert.rename_state(ours.state_dict(), keys, what)
    convert.check_same_keys(state, model.state_dict(), what)
    model.load_state_dict(state)
    return model.to(next(ours.parameters()).device).eval()


def diffusers_vae(vae, sample_size: int):
    """The course VAE (SD layout) as diffusers' AutoencoderKL."""
    from diffusers import AutoencoderKL as DiffusersAutoencoderKL

    model = DiffusersAutoencoderKL(**convert.vae_config(vae.config, sample_size))
    return _renamed_into(model, vae, convert.vae_key_map(vae.config), "VAE")


def transformers_text_encoder(clip, with_projection: bool = False):
    """The course CLIP's text tower as transformers' CLIPTextModel (what SD's pipeline
    reads: the last hidden states), or CLIPTextModelWithProjection (unCLIP's: the
    projected end-token embedding)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    text = {k: v for k, v in clip.state_dict().items() if k.startswith("text.")}
    if "text.token_embedding.new" in text:  # added words: their rows after the others
        text["text.token_embedding.weight"] = torch.cat(
            [
                text.pop("text.token_embedding.base.weight"),
                text.pop("text.token_embedding.new"),
            ]
        )
    vocab = text["text.token_embedding.weight"].shape[0]
    config = CLIPTextConfig(**convert.clip_text_config(clip.config, vocab))
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    model = cls(config)
    state = convert.clip_to_hf_state(text, clip.config, vision=False)
    if not with_projection:
        state.pop("text_projection.weight")
    reference = {
        k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")
    }
    if not any(k.startswith("text_model.") for k in reference):
        # transformers 5's CLIPTextModel has no `text_model` level (its loader reads
        # the older "text_model." names too)
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    convert.check_same_keys(state, reference, "CLIP text encoder")
    model.load_state_dict(state, strict=False)
    return model.to(next(clip.parameters()).device).eval()


def sd_pipeline(pipe) -> StableDiffusionPipeline:
    """The mini SD as an ordinary diffusers StableDiffusionPipeline: diffusers'
    UNet2DConditionModel and AutoencoderKL, transformers' CLIPTextModel and a fast
    tokenizer, DDIMScheduler configured as the course samples. No course code runs in
    it: the weights are copied under SD's names."""
    if pipe.prediction_type != "eps":
        raise ValueError("only eps-prediction models are wired to diffusers' DDIM here")
    size = pipe.text_encoder.config.image_size
    schedule = {
        "kind": pipe.schedule.kind,
        "num_timesteps": pipe.schedule.num_timesteps,
    }
    sd = StableDiffusionPipeline(
        vae=diffusers_vae(pipe.vae, size),
        text_encoder=transformers_text_encoder(pipe.text_encoder),
        tokenizer=convert.hf_tokenizer(pipe.tokenizer),
        unet=diffusers_unet(pipe.unet, pipe.latent_shape[-1]),
        scheduler=course_scheduler(schedule),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    sd.set_progress_bar_config(disable=True)
    return sd


def export_sd(pipe, folder: str | Path) -> Path:
    """Write the mini SD as a standard diffusers folder (model_index.json naming only
    diffusers and transformers classes; safetensors), which
    `StableDiffusionPipeline.from_pretrained(folder)` loads without the course."""
    folder = Path(folder)
    sd_pipeline(pipe).save_pretrained(str(folder), safe_serialization=True)
    return folder


def _read_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        raise FileNotFoundError(
            f"expected one .safetensors file in {folder}, found "
            f"{[f.name for f in files]}"
        )
    return load_file(str(files[0]))


def _load_renamed_back(model, folder: Path, keys: dict) -> None:
    """Load a diffusers component's weights from `folder` into the course's `model`,
    renamed by the inverse of `keys` (every key must be covered)."""
    state = convert.rename_state(
        _read_weights(folder), convert.invert(keys), folder.name
    )
    model.load_state_dict(state)


def _read_config(folder: Path) -> dict:
    import json

    return json.loads((folder / "config.json").read_text())


def _course_unet_config(cfg: dict):
    from .unet import UNetConfig

    widths = cfg["block_out_channels"]
    base = widths[0]
    if any(w % base for w in widths):
        raise ValueError(f"block_out_channels {widths} are not multiples of the first")
    unet = UNetConfig(
        in_channels=cfg["in_channels"],
        out_channels=cfg["out_channels"],
        base_channels=base,
        channel_mults=tuple(w // base for w in widths),
        num_res_blocks=cfg["layers_per_block"],
        attention_levels=tuple(
            i for i, t in enumerate(cfg["down_block_types"]) if "CrossAttn" in t
        ),
        heads=cfg["attention_head_dim"],
        dropout=cfg.get("dropout", 0.0),
        groups=cfg["norm_num_groups"],
        context_dim=cfg["cross_attention_dim"],
        spatial_transformer=True,
    )
    # the course writes only configurations it can read back: anything else differs
    expected = convert.unet_config(unet, cfg["sample_size"])
    differ = {
        k: (cfg.get(k), v)
        for k, v in expected.items()
        if k in cfg and cfg[k] != v and not (isinstance(v, list) and list(cfg[k]) == v)
    }
    if differ:
        raise ValueError(f"this UNet is not one the course can build: {differ}")
    return unet


def import_sd(folder: str | Path, device=None):
    """A diffusers Stable Diffusion folder (as export_sd writes) back as the course's
    MiniStableDiffusion: the same modules the chapters build, the weights renamed
    back. The folder holds CLIP's text tower only, so the imported CLIP's image tower
    is empty (zeros)."""
    import json

    from .clip import CLIP, CLIPConfig, WordTokenizer
    from .pipelines import MiniStableDiffusion
    from .schedules import NoiseSchedule
    from .unet import UNet
    from .vae import AutoencoderKL, VAEConfig

    folder = Path(folder)
    index = json.loads((folder / "model_index.json").read_text())
    if index.get("_class_name") != "StableDiffusionPipeline":
        raise ValueError(f"{folder} holds a {index.get('_class_name')}, not SD")
    ucfg = _read_config(folder / "unet")
    unet = UNet(_course_unet_config(ucfg))
    _load_renamed_back(unet, folder / "unet", convert.unet_key_map(unet.config))
    vcfg = _read_config(folder / "vae")
    vae = AutoencoderKL(
        VAEConfig(
            in_channels=vcfg["in_channels"],
            latent_channels=vcfg["latent_channels"],
            channels=tuple(vcfg["block_out_channels"]),
            blocks_per_level=vcfg["layers_per_block"],
            groups=vcfg["norm_num_groups"],
            scaling_factor=vcfg["scaling_factor"],
            sd_layout=True,
        )
    )
    _load_renamed_back(vae, folder / "vae", convert.vae_key_map(vae.config))
    tcfg = _read_config(folder / "text_encoder")
    tok_cfg = json.loads((folder / "tokenizer" / "tokenizer.json").read_text())
    vocab = tok_cfg["model"]["vocab"]
    specials = set(convert.SPECIAL_TOKENS)
    words = [
        w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if w not in specials
    ]
    tokenizer = WordTokenizer(words, tcfg["max_position_embeddings"])
    clip_cfg = CLIPConfig(
        vocab_size=tcfg["vocab_size"],
        context_length=tcfg["max_position_embeddings"],
        text_width=tcfg["hidden_size"],
        text_layers=tcfg["num_hidden_layers"],
        text_heads=tcfg["num_attention_heads"],
        image_size=vcfg["sample_size"],
        patch_size=vcfg["sample_size"],
        vision_width=tcfg["hidden_size"],
        vision_layers=0,
        vision_heads=tcfg["num_attention_heads"],
        embed_dim=tcfg.get("projection_dim", tcfg["hidden_size"]),
    )
    clip = CLIP(clip_cfg)
    weights = {
        k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}": v
        for k, v in _read_weights(folder / "text_encoder").items()
    }
    text = convert.clip_from_hf_state(weights, clip_cfg, vision=False)
    state = {k: torch.zeros_like(v) for k, v in clip.state_dict().items()}
    missing = set(k for k in state if k.startswith("text.")) - set(text)
    if missing - {"text.projection.weight"}:
        raise ValueError(f"the text encoder lacks {sorted(missing)[:5]}")
    state.update(text)
    clip.load_state_dict(state)
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    kinds = {
        "squaredcos_cap_v2": "cosine",
        "linear": "linear",
        "scaled_linear": "scaled_linear",
    }
    schedule = NoiseSchedule.make(
        kinds[scheduler["beta_schedule"]], scheduler["num_train_timesteps"]
    )
    models = [
        m.to(device or "cpu").eval().requires_grad_(False) for m in (unet, vae, clip)
    ]
    return MiniStableDiffusion(*models[:2], models[2], tokenizer, schedule)


def _added_words(pipe) -> dict:
    """{word: embedding row} of the words added to the pipeline's text encoder
    (textual inversion, or a LoRA's new word)."""
    from .adapters import TrainableWords

    table = pipe.text_encoder.text.token_embedding
    if not isinstance(table, TrainableWords):
        return {}
    return {
        w: table.new[i].detach().clone() for i, w in enumerate(pipe.tokenizer.added)
    }


def export_embedding(pipe, folder: str | Path) -> list[Path]:
    """Each word added to the pipeline (textual inversion) as `<word>.safetensors`
    holding {word: row}, the file diffusers' `pipe.load_textual_inversion(file,
    token=word)` reads (the row in the text encoder's embedding space)."""
    from safetensors.torch import save_file

    words = _added_words(pipe)
    if not words:
        raise ValueError("the pipeline has no added word (see load_textual_inversion)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for word, row in words.items():
        paths.append(folder / f"{word}.safetensors")
        save_file({word: row.float().contiguous().cpu()}, str(paths[-1]))
    return paths


def export_lora(pipe, folder: str | Path) -> Path:
    """The LoRA in the pipeline's UNet in diffusers' format
    (`pytorch_lora_weights.safetensors`: peft's lora_A / lora_B under SD's module
    names, with its rank, alpha and targets as the adapter's metadata), which
    `pipe.load_lora_weights(folder)` reads; the adapter's added word, if any, as a
    textual-inversion file beside it (export_embedding)."""
    from .adapters import lora_layers, lora_state_dict

    layers = lora_layers(pipe.unet)
    if not layers:
        raise ValueError("the pipeline's UNet has no LoRA layers (load_lora_weights)")
    ranks = {m.r for m in layers.values()}
    alphas = {m.alpha for m in layers.values()}
    if len(ranks) != 1 or len(alphas) != 1:
        raise ValueError(f"one rank and alpha expected, got {ranks} and {alphas}")
    state = convert.rename_state(
        lora_state_dict(pipe.unet), convert.unet_key_map(pipe.unet.config), "LoRA"
    )
    targets = sorted({k.rsplit(".lora_", 1)[0] for k in state})
    metadata = {"r": ranks.pop(), "lora_alpha": alphas.pop(), "target_modules": targets}
    folder = Path(folder)
    StableDiffusionPipeline.save_lora_weights(
        str(folder),
        unet_lora_layers={k: v.float().cpu() for k, v in state.items()},
        unet_lora_adapter_metadata=metadata,
        safe_serialization=True,
    )
    if _added_words(pipe):
        export_embedding(pipe, folder)
    return folder


def diffusers_controlnet(pipe):
    """The pipeline's ControlNet as diffusers' ControlNetModel."""
    from diffusers import ControlNetModel

    net = pipe.controlnet
    if net is None:
        raise ValueError("the pipeline has no ControlNet (load_controlnet)")
    model = ControlNetModel(**convert.controlnet_config(net, pipe.latent_shape[-1]))
    return _renamed_into(model, net, convert.controlnet_key_map(net), "ControlNet")


def export_controlnet(pipe, folder: str | Path) -> Path:
    """The ControlNet as a diffusers ControlNetModel folder, which
    `StableDiffusionControlNetPipeline` runs beside the exported SD (the control
    image: a [B, c, H, W] tensor in [0, 1], as the course's)."""
    folder = Path(folder)
    diffusers_controlnet(pipe).save_pretrained(str(folder), safe_serialization=True)
    return folder


def export_inpaint(pipe, model, folder: str | Path) -> Path:
    """The inpainting UNet (an editing.InpaintingUNet in SD's channel order) with the
    pipeline's VAE, text encoder, tokenizer and scheduler as a diffusers
    StableDiffusionInpaintPipeline folder."""
    from diffusers import StableDiffusionInpaintPipeline

    if not model.sd_order:
        raise ValueError(
            "this inpainting UNet takes the course's first channel order [x_t, masked "
            "latent, mask]; SD's is [x_t, mask, masked latent]: retrain it with "
            "sd_order=True"
        )
    parts = sd_pipeline(pipe).components
    parts["unet"] = diffusers_unet(model.unet, pipe.latent_shape[-1])
    inpainting = StableDiffusionInpaintPipeline(**parts)
    folder = Path(folder)
    inpainting.save_pretrained(str(folder), safe_serialization=True)
    return folder


def export_all(
    out: str | Path,
    checkpoints=None,
    *,
    model: str = "sd",
    lora: str | None = None,
    embedding: str | None = None,
    controlnet: str | None = None,
    inpaint: bool = False,
) -> dict[str, list[Path]]:
    """`python -m diffusion_lib export`: with model="dalle2", the mini DALL-E 2's parts
    that map (export_dalle2); with "sd", the shipped (or `checkpoints`) mini SD as a
    diffusers folder `out`, and each extension asked for in a folder inside it:
    out/lora (load_lora_weights, with its word's textual-inversion file),
    out/embedding (load_textual_inversion), out/controlnet (ControlNetModel),
    out/inpaint (a StableDiffusionInpaintPipeline). Returns {part: paths}."""
    from . import loaders
    from .pipelines import MiniDALLE2, MiniStableDiffusion

    out = Path(out)
    if model == "dalle2":
        if lora or embedding or controlnet or inpaint:
            raise ValueError("the extensions (--lora, ...) belong to the mini SD")
        parts = export_dalle2(MiniDALLE2.from_pretrained("cpu", checkpoints), out)
        return {name: [path] for name, path in parts.items()}
    if model != "sd":
        raise ValueError(f"model must be 'sd' or 'dalle2', got {model!r}")
    pipe = MiniStableDiffusion.from_pretrained("cpu", checkpoints)
    written = {"sd": [export_sd(pipe, out)]}
    if controlnet is not None:  # before the LoRA: it copies the plain UNet
        loaders.load_controlnet(pipe, controlnet, checkpoints)
        written["controlnet"] = [export_controlnet(pipe, out / "controlnet")]
    if inpaint:
        model, _ = loaders.load_inpainting(checkpoints)
        written["inpaint"] = [export_inpaint(pipe, model, out / "inpaint")]
    if embedding is not None:
        words = MiniStableDiffusion.from_pretrained("cpu", checkpoints)
        loaders.load_textual_inversion(words, embedding, checkpoints)
        written["embedding"] = export_embedding(words, out / "embedding")
    if lora is not None:
        loaders.load_lora_weights(pipe, lora, checkpoints)
        written["lora"] = [export_lora(pipe, out / "lora")]
    return written


def import_to_checkpoints(
    folder: str | Path, out: str | Path, guidance_scale: float = 3.0
) -> list[Path]:
    """`python -m diffusion_lib import`: a diffusers Stable Diffusion folder (as
    export_sd writes) as the course's checkpoints scenes-ldm, scenes-vae and
    scenes-clip in `out` (float32, with manifests naming the folder), which
    `MiniStableDiffusion.from_pretrained(directory=out)` and `generate --checkpoints
    out` load."""
    from . import pretrained
    from .train import save_checkpoint

    pipe = import_sd(folder)
    source = {"imported_from": str(Path(folder).resolve())}
    parts = {
        "scenes-vae": (pipe.vae, {"config": pipe.vae.config.to_dict()}),
        "scenes-clip": (
            pipe.text_encoder,
            {
                "config": pipe.text_encoder.config.to_dict(),
                "tokenizer": pipe.tokenizer.to_dict(),
            },
        ),
        "scenes-ldm": (
            pipe.unet,
            {
                "config": pipe.unet.config.to_dict(),
                "schedule": {
                    "kind": pipe.schedule.kind,
                    "num_timesteps": pipe.schedule.num_timesteps,
                },
                "prediction_type": pipe.prediction_type,
                "guidance_scale": guidance_scale,
            },
        ),
    }
    paths = []
    for name, (model, info) in parts.items():
        path = pretrained.checkpoint_path(name, out)
        save_checkpoint(path, model, {"recipe": name, **info, **source}, torch.float32)
        paths.append(path)
    return paths


# ------------------------------------------- the mini DALL-E 2's parts in diffusers


def diffusers_prior(prior):
    """The mini DALL-E 2's prior as diffusers' PriorTransformer (Karlo's class):
    prior(x_t, t, states, text_embed, mask) = PriorTransformer(hidden_states=x_t,
    timestep=t, proj_embedding=text_embed, encoder_hidden_states=states,
    attention_mask=mask).predicted_image_embedding."""
    from diffusers import PriorTransformer

    model = PriorTransformer(**convert.prior_config(prior.config))
    state = convert.prior_to_diffusers_state(prior.state_dict(), prior.config)
    convert.check_same_keys(state, model.state_dict(), "prior")
    model.load_state_dict(state)
    return model.to(next(prior.parameters()).device).eval()


def diffusers_upsampler(upsampler, sample_size: int):
    """The mini DALL-E 2's upsampler as diffusers' UNet2DModel: upsampler(x_t, t,
    low_res) = UNet2DModel(cat[x_t, unclip.enlarge(low_res)], t).sample."""
    from diffusers import UNet2DModel

    cfg = upsampler.unet.config
    model = UNet2DModel(**convert.unet2d_config(cfg, sample_size))
    keys = {f"unet.{k}": v for k, v in convert.unet_key_map(cfg).items()}
    return _renamed_into(model, upsampler, keys, "upsampler")


def diffusers_decoder(decoder):
    """The mini DALL-E 2's decoder as diffusers' unCLIP decoder (UnCLIPPipeline's
    `decoder` and `text_proj`): (UNet2DConditionModel, UnCLIPTextProjModel). Needs
    GLIDE attention and the paper's text conditioning (convert.decoder_configs);
    decoder_eps_diffusers runs them as the pipeline does."""
    from diffusers import UNet2DConditionModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    unet_config, proj_config = convert.decoder_configs(decoder.config)
    unet, proj = UNet2DConditionModel(**unet_config), UnCLIPTextProjModel(**proj_config)
    unet_state, proj_state = convert.decoder_to_diffusers_state(
        decoder.state_dict(), decoder.config
    )
    device = next(decoder.parameters()).device
    for model, state, what in (
        (unet, unet_state, "decoder UNet"),
        (proj, proj_state, "text_proj"),
    ):
        convert.check_same_keys(state, model.state_dict(), what)
        model.load_state_dict(state)
        model.to(device).eval()
    return unet, proj


def decoder_eps_diffusers(
    unet, text_proj, x_t, t, image_embed, text_embed, text_states, text_mask
):
    """The decoder's output as UnCLIPPipeline computes it (one branch, no guidance):
    text_proj turns the embeddings into the context and the time-embedding term, the
    mask gains the image tokens in front, and the UNet reads them."""
    import torch.nn.functional as F

    context, added = text_proj(
        image_embeddings=image_embed,
        prompt_embeds=text_embed,
        text_encoder_hidden_states=text_states,
        do_classifier_free_guidance=False,
    )
    mask = F.pad(text_mask, (text_proj.clip_extra_context_tokens, 0), value=True)
    return unet(
        x_t, t, encoder_hidden_states=context, class_labels=added, attention_mask=mask
    ).sample


DALLE2_DECODER_NOTE = (
    "the decoder is not exported: it was trained by the first recipe, whose attention "
    "blocks run self-attention and a separate cross-attention to the image tokens, "
    "where diffusers' unCLIP decoder (the paper's, GLIDE's) attends once over the "
    "pixels and the context tokens together and reads the caption too; retrain it "
    "with `python -m diffusion_lib.recipes scenes-decoder` (chapter 9)"
)


def exportable_decoder(decoder) -> bool:
    """Whether a decoder maps onto diffusers' unCLIP decoder by renaming (GLIDE
    attention and the paper's text conditioning: convert.decoder_configs)."""
    return decoder.config.text_conditioning and decoder.config.unet.glide_attention


def dalle2_schedulers(pipe) -> dict:
    """A DDIMScheduler per stage, set up as the course samples it: the prior predicts
    the (standardised) embedding, unclipped; the decoder and the upsampler their own
    prediction types, clipped."""
    return {
        "prior_scheduler": course_scheduler(
            _schedule_info(pipe.prior_schedule), "x0", clip_sample=False
        ),
        "decoder_scheduler": course_scheduler(
            _schedule_info(pipe.decoder_schedule),
            pipe.decoder_prediction,
            clip_sample=True,
        ),
        "super_res_scheduler": course_scheduler(
            _schedule_info(pipe.upsampler_schedule),
            pipe.upsampler_prediction,
            clip_sample=True,
        ),
    }


def _schedule_info(schedule) -> dict:
    return {"kind": schedule.kind, "num_timesteps": schedule.num_timesteps}


def export_dalle2(pipe, folder: str | Path) -> dict[str, Path]:
    """The mini DALL-E 2 as diffusers' and transformers' classes, by renaming:
    folder/prior (PriorTransformer), folder/decoder (UNet2DConditionModel) with
    folder/text_proj (UnCLIPTextProjModel), folder/upsampler (UNet2DModel),
    folder/text_encoder (CLIPTextModelWithProjection), folder/tokenizer, and a
    DDIMScheduler per stage (dalle2_schedulers). A decoder of the first recipe has no
    diffusers equivalent and is left out (DALLE2_DECODER_NOTE)."""
    folder = Path(folder)
    size = pipe.clip.config.image_size
    parts = {
        "prior": diffusers_prior(pipe.prior),
        "upsampler": diffusers_upsampler(pipe.upsampler, size),
        "text_encoder": transformers_text_encoder(pipe.clip, with_projection=True),
        "tokenizer": convert.hf_tokenizer(pipe.tokenizer),
        **dalle2_schedulers(pipe),
    }
    if exportable_decoder(pipe.decoder):
        parts["decoder"], parts["text_proj"] = diffusers_decoder(pipe.decoder)
    out = {}
    for name, part in parts.items():
        out[name] = folder / name
        if name == "tokenizer" or name.endswith("_scheduler"):
            part.save_pretrained(str(out[name]))
        else:
            part.save_pretrained(str(out[name]), safe_serialization=True)
    return out


# A Python in which `diffusion_lib` cannot be imported: what runs there is diffusers,
# transformers and torch only, so agreement with the course is agreement between two
# implementations.
BLOCK_COURSE = """
import sys

class _BlockCourse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "diffusion_lib":
            raise ImportError("diffusion_lib is blocked in this process")

sys.meta_path.insert(0, _BlockCourse())
"""

# Loads an exported SD folder there and computes each component's output on the given
# inputs and the pipeline's images from the prompt strings.
_SD_OUTPUTS = """
import torch
from diffusers import StableDiffusionPipeline

folder, inputs, out = sys.argv[1:4]
x = torch.load(inputs)
sd = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
sd.set_progress_bar_config(disable=True)
result = {"classes": {k: type(getattr(sd, k)).__module__.split(".")[0] + "."
          + type(getattr(sd, k)).__name__
          for k in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")}}
with torch.no_grad():
    ids = sd.tokenizer(x["prompts"], padding="max_length", truncation=True,
                       max_length=sd.tokenizer.model_max_length,
                       return_tensors="pt").input_ids
    result["text_states"] = sd.text_encoder(ids)[0]
    result["unet"] = sd.unet(x["latents"], x["t"],
                             encoder_hidden_states=x["context"]).sample
    posterior = sd.vae.encode(x["images"]).latent_dist
    result["vae_mean"], result["vae_logvar"] = posterior.mean, posterior.logvar
    result["vae_decode"] = sd.vae.decode(x["latents"]).sample
    for scale in x["guidance"]:
        result[f"images_{scale:g}"] = sd(
            x["prompts"], num_inference_steps=x["steps"], guidance_scale=scale,
            generator=torch.Generator().manual_seed(x["seed"]), output_type="pt",
        ).images * 2 - 1
torch.save(result, out)
"""


def run_without_course(script: str, *args, timeout: int = 600) -> None:
    """Run `script` (Python source; sys.argv[1:] = args) in a fresh Python where
    `diffusion_lib` cannot be imported; RuntimeError with its stderr if it fails."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as cwd:  # not the course's folder
        run = subprocess.run(
            [sys.executable, "-c", BLOCK_COURSE + script, *map(str, args)],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if run.returncode:
        raise RuntimeError(
            f"the script failed outside the course:\n{run.stderr[-3000:]}"
        )


# The mini DALL-E 2 run by diffusers' and transformers' classes alone, from an
# exported folder (export_dalle2): each part's output on given inputs, and images from
# the prompt strings through the three stages as the course samples them (DDIM with
# each stage's exported scheduler, guidance, the better of `candidates` prior draws by
# dot product with the text embedding, the upsampler from pure noise).
DALLE2_WITH_DIFFUSERS = """
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, PriorTransformer, UNet2DConditionModel, UNet2DModel
from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
from transformers import CLIPTextModelWithProjection, PreTrainedTokenizerFast

folder, inputs, out = sys.argv[1:4]
x = torch.load(inputs)
load = lambda cls, name: cls.from_pretrained(f"{folder}/{name}").eval()
prior, upsampler = load(PriorTransformer, "prior"), load(UNet2DModel, "upsampler")
decoder = load(UNet2DConditionModel, "decoder")
text_proj = load(UnCLIPTextProjModel, "text_proj")
text = load(CLIPTextModelWithProjection, "text_encoder")
tokenizer = PreTrainedTokenizerFast.from_pretrained(f"{folder}/tokenizer")
scheduler = lambda name: DDIMScheduler.from_pretrained(f"{folder}/{name}")

def encode(prompts):
    ids = tokenizer(prompts, padding="max_length", return_tensors="pt").input_ids
    encoded = text(ids)
    return {"states": encoded.last_hidden_state, "mask": ids != tokenizer.pad_token_id,
            "embed": F.normalize(encoded.text_embeds, dim=-1)}

def run_prior(z, t, c):
    return prior(hidden_states=z, timestep=t, proj_embedding=c["embed"],
                 encoder_hidden_states=c["states"], attention_mask=c["mask"]
                 ).predicted_image_embedding

def run_decoder(z, t, e, c):
    context, added = text_proj(image_embeddings=e, prompt_embeds=c["embed"],
                               text_encoder_hidden_states=c["states"],
                               do_classifier_free_guidance=False)
    mask = F.pad(c["mask"], (text_proj.clip_extra_context_tokens, 0), value=True)
    return decoder(z, t, encoder_hidden_states=context, class_labels=added,
                   attention_mask=mask).sample

def ddim(name, z, steps, model, guidance=1.0):
    sched = scheduler(name)
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        tt = torch.full((z.shape[0],), int(t), dtype=torch.long)
        cond, uncond = model(z, tt)
        out = cond if uncond is None else uncond + guidance * (cond - uncond)
        # with clipping, eps recomputed from the clipped x0 (as the course's step)
        z = sched.step(out, t, z, use_clipped_model_output=sched.config.clip_sample
                       ).prev_sample
    return z

with torch.no_grad():
    c = encode(x["prompts"])
    result = {
        "text_states": c["states"], "text_embed": c["embed"],
        "prior": run_prior(x["x_prior"], x["t"], c),
        "decoder": run_decoder(x["x_decoder"], x["t"], x["image_embed"], c),
        "upsampler": upsampler(torch.cat([x["x_up"], x["enlarged"]], 1), x["t"]).sample,
    }
    b, k = len(x["prompts"]), x["candidates"]
    null = encode([""] * b)
    repeat = lambda d: {n: v.repeat(k, *[1] * (v.ndim - 1)) for n, v in d.items()}
    ck, nk = repeat(c), repeat(null)
    gen = torch.Generator().manual_seed(x["seeds"]["prior"])
    z = torch.randn(k * b, prior.config.embedding_dim, generator=gen)
    z = ddim("prior_scheduler", z, x["prior_steps"],
             lambda z, t: (run_prior(z, t, ck), run_prior(z, t, nk)),
             x["prior_guidance"])
    draws = F.normalize(prior.post_process_latents(z), dim=-1).unflatten(0, (k, b))
    best = torch.einsum("kbd,bd->kb", draws, c["embed"]).argmax(0)
    e = draws[best, torch.arange(b)]
    size = decoder.config.sample_size
    gen = torch.Generator().manual_seed(x["seeds"]["decoder"])
    low = torch.randn(b, 3, size, size, generator=gen)
    low = ddim("decoder_scheduler", low, x["decoder_steps"], lambda z, t: (
        run_decoder(z, t, e, c), run_decoder(z, t, torch.zeros_like(e), null)),
        x["decoder_guidance"])
    up = upsampler.config.sample_size
    enlarged = F.interpolate(low, size=(up, up), mode="bicubic",
                             align_corners=False).clamp(-1, 1)
    gen = torch.Generator().manual_seed(x["seeds"]["upsampler"])
    high = torch.randn(b, 3, up, up, generator=gen)
    high = ddim("super_res_scheduler", high, x["upsampler_steps"], lambda z, t: (
        upsampler(torch.cat([z, enlarged], 1), t).sample, None))
    result.update({"image_embeddings": e, "low_res": low, "images": high})
torch.save(result, out)
"""


def dalle2_reference_inputs(pipe, prompts, steps: int, seed: int = 0) -> dict:
    """Inputs for dalle2_reference_outputs and dalle2_course_outputs: the prompts,
    random inputs for each part (fixed seed), the sampling settings of `pipe` and
    the seeds of its stage generators."""
    from .pipelines import stage_generator
    from .unclip import enlarge

    if pipe.upsampler_start not in (None, pipe.upsampler_schedule.num_timesteps - 1):
        raise ValueError(
            "the reference samples the upsampler from pure noise; this pipeline "
            f"starts it at step {pipe.upsampler_start} (SDEdit)"
        )
    for what, k, schedule in (
        ("the prior's steps", pipe.prior_steps, pipe.prior_schedule),
        ("steps", steps, pipe.decoder_schedule),
        ("the upsampler's steps", pipe.upsampler_steps, pipe.upsampler_schedule),
    ):
        check_ddim_steps(k, schedule.num_timesteps, what)
    gen = torch.Generator().manual_seed(0)
    n, d = len(prompts), pipe.prior.config.embed_dim
    size = pipe.clip.config.image_size
    small = pipe.decoder.config.image_size
    low = torch.rand(n, 3, size // 2, size // 2, generator=gen) * 2 - 1
    unit = torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=-1)
    return {
        "prompts": list(prompts),
        "t": torch.linspace(10, pipe.decoder_schedule.num_timesteps - 1, n).long(),
        "x_prior": torch.randn(n, d, generator=gen),
        "x_decoder": torch.randn(n, 3, small, small, generator=gen),
        "image_embed": unit,
        "x_up": torch.randn(n, 3, size, size, generator=gen),
        "low": low,
        "enlarged": enlarge(low, size),
        "candidates": pipe.candidates,
        "prior_steps": pipe.prior_steps,
        "prior_guidance": pipe.prior_guidance,
        "decoder_steps": steps,
        "decoder_guidance": pipe.guidance_scale,
        "upsampler_steps": pipe.upsampler_steps,
        "seed": seed,
        "seeds": {
            stage: stage_generator(seed, stage).initial_seed()
            for stage in ("prior", "decoder", "upsampler")
        },
    }


def dalle2_reference_outputs(folder, inputs: dict) -> dict:
    """What diffusers and transformers alone compute from an exported mini DALL-E 2
    folder (DALLE2_WITH_DIFFUSERS, run_without_course)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        torch.save(inputs, f"{tmp}/inputs.pt")
        run_without_course(
            DALLE2_WITH_DIFFUSERS, folder, f"{tmp}/inputs.pt", f"{tmp}/out.pt"
        )
        return torch.load(f"{tmp}/out.pt")


@torch.no_grad()
def dalle2_course_outputs(pipe, inputs: dict) -> dict:
    """The course's own outputs for the same inputs (see dalle2_reference_outputs)."""
    c = pipe.encode_prompts(inputs["prompts"])
    e = pipe.prior_embeddings(inputs["prompts"], seed=inputs["seed"])
    low = pipe.decoder_images(
        e,
        captions=inputs["prompts"],
        num_steps=inputs["decoder_steps"],
        seed=inputs["seed"],
    )
    out = {
        "text_states": c["text_states"],
        "text_embed": c["text_embed"],
        "prior": pipe.prior(
            inputs["x_prior"],
            inputs["t"],
            c["text_states"],
            c["text_embed"],
            c["text_mask"],
        ),
        "decoder": pipe.decoder(
            inputs["x_decoder"], inputs["t"], inputs["image_embed"], **c
        ),
        "upsampler": pipe.upsampler(inputs["x_up"], inputs["t"], inputs["low"]),
        "image_embeddings": e,
        "low_res": low,
        "images": pipe.upsample(low, seed=inputs["seed"]),
    }
    return {k: v.cpu() for k, v in out.items()}


def sd_reference_inputs(pipe, prompts, steps: int, guidance=(3.0, 1.0), seed=0):
    """Inputs for `sd_reference_outputs` (and the course's `course_outputs`): the
    prompts, random latents, timesteps, text states and images (fixed seed), and the
    seed of the generator the course draws x_T from."""
    from .pipelines import stage_generator

    gen = torch.Generator().manual_seed(0)
    size = pipe.text_encoder.config.image_size
    n, width = len(prompts), pipe.text_encoder.config.text_width
    return {
        "prompts": list(prompts),
        "latents": torch.randn((n, *pipe.latent_shape), generator=gen),
        "t": torch.linspace(10, pipe.schedule.num_timesteps - 1, n).long(),
        "context": torch.randn(n, pipe.tokenizer.context_length, width, generator=gen),
        "images": torch.rand(n, 3, size, size, generator=gen) * 2 - 1,
        "steps": steps,
        "guidance": list(guidance),
        "seed": seed,
        "x_T_seed": stage_generator(seed, "latents").initial_seed(),
    }


# Samples from an exported SD folder with diffusers' own schedulers, in a Python without
# the course: each setting {label: ("ddim" or "dpm", steps)}, same prompts and seed.
_SD_SCHEDULERS = """
import time
import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

folder, inputs, out = sys.argv[1:4]
x = torch.load(inputs)
sd = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
sd.set_progress_bar_config(disable=True)
ddim = sd.scheduler
result = {}
for label, (kind, steps) in x["settings"].items():
    sd.scheduler = (
        ddim if kind == "ddim" else DPMSolverMultistepScheduler.from_config(ddim.config)
    )
    start = time.perf_counter()
    images = sd(x["prompts"], num_inference_steps=steps, guidance_scale=x["guidance"],
                generator=torch.Generator().manual_seed(x["seed"]),
                output_type="pt").images * 2 - 1
    result[label] = {"images": images, "seconds": time.perf_counter() - start,
                     "scheduler": type(sd.scheduler).__name__}
torch.save(result, out)
"""

SCHEDULER_KINDS = ("ddim", "dpm")


def sd_scheduler_images(
    folder, prompts, settings: dict, guidance: float, seed: int = 0
) -> dict:
    """Images [B, 3, H, W] in [-1, 1] from an exported SD folder for each of
    `settings` ({label: ("ddim" | "dpm", steps)}: the folder's DDIMScheduler, or
    diffusers' DPMSolverMultistepScheduler built from its configuration), sampled by
    diffusers alone (run_without_course) from the same prompts and seed, with the
    seconds each took. {label: {"images", "seconds", "scheduler"}}."""
    import tempfile

    for label, (kind, steps) in settings.items():
        if kind not in SCHEDULER_KINDS or steps < 1:
            raise ValueError(
                f"setting {label!r}: expected (one of {SCHEDULER_KINDS}, steps >= 1), "
                f"got {(kind, steps)}"
            )
    from .pipelines import stage_generator

    x = {
        "prompts": list(prompts),
        "settings": dict(settings),
        "guidance": guidance,
        # x_T drawn as the course's pipeline draws it for `seed`
        "seed": stage_generator(seed, "latents").initial_seed(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(x, f"{tmp}/inputs.pt")
        run_without_course(_SD_SCHEDULERS, folder, f"{tmp}/inputs.pt", f"{tmp}/out.pt")
        return torch.load(f"{tmp}/out.pt")


def sd_reference_outputs(folder, inputs: dict) -> dict:
    """What diffusers and transformers alone compute from an exported SD folder
    (run_without_course): each component's output on `inputs` and the pipeline's
    images from the prompt strings ({"images_<guidance>": [B, 3, H, W] in [-1, 1]})."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        torch.save({**inputs, "seed": inputs["x_T_seed"]}, f"{tmp}/inputs.pt")
        run_without_course(_SD_OUTPUTS, folder, f"{tmp}/inputs.pt", f"{tmp}/out.pt")
        return torch.load(f"{tmp}/out.pt")


@torch.no_grad()
def sd_course_outputs(pipe, inputs: dict) -> dict:
    """The course's own outputs for the same inputs (see sd_reference_outputs)."""
    posterior = pipe.vae.encode(inputs["images"].to(pipe.device))
    out = {
        "text_states": pipe.encode_prompts(inputs["prompts"]),
        "unet": pipe.unet(
            inputs["latents"].to(pipe.device),
            inputs["t"].to(pipe.device),
            context=inputs["context"].to(pipe.device),
        ),
        "vae_mean": posterior.mean,
        "vae_logvar": posterior.logvar,
        "vae_decode": pipe.vae.decode(inputs["latents"].to(pipe.device)),
    }
    for scale in inputs["guidance"]:
        out[f"images_{scale:g}"] = pipe(
            inputs["prompts"],
            num_steps=inputs["steps"],
            seed=inputs["seed"],
            guidance_scale=scale,
        )
    return {k: v.cpu() for k, v in out.items()}


def agreement(ours: dict, theirs: dict) -> dict:
    """max |ours - theirs| for every output the two dicts share."""
    return {
        k: (ours[k].float() - theirs[k].float()).abs().max().item()
        for k in ours
        if k in theirs
    }


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

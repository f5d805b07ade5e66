"""Training recipes for the shipped checkpoints: one command per model, seeded.

    python -m diffusion_lib.recipes shapes-evaluator
    python -m diffusion_lib.recipes shapes-ddpm
    python -m diffusion_lib.recipes shapes-ddpm --stage measure  # re-measure only
    python -m diffusion_lib.recipes shapes-ddpm --quick --out /tmp/ckpt  # a smoke run
    python -m diffusion_lib.recipes scenes-vae scenes-clip scenes-ldm  # in order
    python -m diffusion_lib.recipes ablation --steps 1500  # the comparison behind it

Each recipe trains, measures its quality gates, and writes NAME.safetensors + NAME.json.
Every recipe also runs data-parallel, in mixed precision or with gradient
accumulation under 🤗 Accelerate (see diffusion_lib.scale):

    accelerate launch --multi_gpu --num_processes 4 -m diffusion_lib.recipes scenes-ldm

One file per model holds its presets (a config, and the differences of its smoke run
with the reason for each), its training function and its measurement; `base` holds
the `Recipe` record, the stage dispatch and the named seed streams; `measure` the
measurements several recipes share; `registry` the RECIPES that the command line
(`cli`), the Makefile's `checkpoints` target and `accelerate launch` read.
"""

from __future__ import annotations

from .base import BUDGET_FRACTIONS, SEED_STREAMS, STAGES, Recipe, budget_steps, seed_of
from .cli import main
from .dalle2 import (
    UNCLIP_BASE_SIZE,
    UNCLIP_SCHEDULE,
    UNCLIP_TRAINING_IMAGES,
    clip_embeddings,
    empty_caption_embeddings,
    unclip_training_captions,
    unclip_training_scenes,
)
from .measure import (
    LDM_GROUPS,
    SCENE_MEASURE_PROMPTS,
    binding_prompts,
    guidance_sweep,
    measure_binding,
    measure_prior_on,
    measure_scene_pipeline,
    prior_spread,
    shapes_quality,
    unseen_scenes,
    upsampler_psnr,
)
from .registry import PART_IV, RECIPES
from .scenes_clip import (
    CLIP_RECIPE,
    SCENES_CLIP_TRAIN,
    measure_clip,
    scenes_clip_config,
)
from .scenes_controlnet import CONTROL_IMAGES, CONTROL_WATCH, CONTROLNET
from .scenes_decoder import (
    CAPTION_DROP,
    DECODER,
    DECODER_GUIDANCE,
    PAPER_ABLATION_FID,
    SCENES_DECODER,
    SCENES_DECODER_TRAIN,
    TEXT_TWIN,
    VARIATION_SOURCES,
    budget_stacks,
    decoder_conditions,
    embedding_ablation,
    measure_dalle2,
    measure_variations,
)
from .scenes_inpaint import (
    EDIT_IMAGES,
    INPAINT,
    INPAINT_SD_ORDER,
    INPAINT_TRAIN,
    REPAINT_RESAMPLE,
)
from .scenes_inversion import INVERSION
from .scenes_ldm import (
    LDM,
    LDM_GUIDANCE,
    LDM_SCHEDULE,
    LDM_SWEEP,
    LDM_TWO_OBJECT_FRACTION,
    PIXEL_COMPARISON_UNET,
    SCENES_LDM_TRAIN,
    SCENES_LDM_UNET,
)
from .scenes_lora import LORA
from .scenes_prior import (
    PRIOR,
    PRIOR_GROUPS,
    PRIOR_GUIDANCE,
    PRIOR_SPREAD_GATE,
    SCENES_PRIOR,
    SCENES_PRIOR_TRAIN,
)
from .scenes_upsampler import (
    EPS_TWIN,
    SCENES_UPSAMPLER,
    SCENES_UPSAMPLER_TRAIN,
    UPSAMPLER,
    UPSAMPLER_START,
    X0_TIMESTEPS,
    x0_psnr_by_t,
)
from .scenes_vae import SCENES_VAE, SCENES_VAE_TRAIN, VAE, VAE_TRADEOFF, vae_tradeoff
from .shapes import (
    ABLATION,
    DDPM,
    EVAL_SAMPLER,
    EVALUATOR,
    SCHEDULE,
    SHAPES_TRAIN,
    SHAPES_UNET,
    ablation,
)

__all__ = [
    "ABLATION",
    "CLIP_RECIPE",
    "CONTROLNET",
    "CONTROL_IMAGES",
    "CONTROL_WATCH",
    "DDPM",
    "DECODER",
    "DECODER_GUIDANCE",
    "EDIT_IMAGES",
    "EVALUATOR",
    "EVAL_SAMPLER",
    "INPAINT",
    "INPAINT_SD_ORDER",
    "INPAINT_TRAIN",
    "INVERSION",
    "LDM",
    "LDM_GROUPS",
    "LDM_GUIDANCE",
    "LDM_SCHEDULE",
    "LDM_SWEEP",
    "LDM_TWO_OBJECT_FRACTION",
    "LORA",
    "PIXEL_COMPARISON_UNET",
    "PRIOR",
    "PRIOR_GROUPS",
    "PRIOR_GUIDANCE",
    "PRIOR_SPREAD_GATE",
    "REPAINT_RESAMPLE",
    "Recipe",
    "SCENES_CLIP_TRAIN",
    "BUDGET_FRACTIONS",
    "CAPTION_DROP",
    "EPS_TWIN",
    "PAPER_ABLATION_FID",
    "TEXT_TWIN",
    "X0_TIMESTEPS",
    "budget_stacks",
    "budget_steps",
    "decoder_conditions",
    "x0_psnr_by_t",
    "SCENES_DECODER",
    "SCENES_DECODER_TRAIN",
    "SCENES_LDM_TRAIN",
    "SCENES_LDM_UNET",
    "SCENES_PRIOR",
    "SCENES_PRIOR_TRAIN",
    "SCENES_UPSAMPLER",
    "SCENES_UPSAMPLER_TRAIN",
    "SCENES_VAE",
    "SCENES_VAE_TRAIN",
    "SCENE_MEASURE_PROMPTS",
    "SCHEDULE",
    "SEED_STREAMS",
    "SHAPES_TRAIN",
    "SHAPES_UNET",
    "STAGES",
    "UNCLIP_BASE_SIZE",
    "UNCLIP_SCHEDULE",
    "UNCLIP_TRAINING_IMAGES",
    "UPSAMPLER",
    "UPSAMPLER_START",
    "VAE",
    "VAE_TRADEOFF",
    "VARIATION_SOURCES",
    "ablation",
    "binding_prompts",
    "clip_embeddings",
    "embedding_ablation",
    "empty_caption_embeddings",
    "guidance_sweep",
    "measure_binding",
    "measure_clip",
    "measure_dalle2",
    "measure_prior_on",
    "measure_scene_pipeline",
    "measure_variations",
    "prior_spread",
    "scenes_clip_config",
    "seed_of",
    "shapes_quality",
    "unclip_training_captions",
    "unclip_training_scenes",
    "unseen_scenes",
    "upsampler_psnr",
    "vae_tradeoff",
    "RECIPES",
    "PART_IV",
    "main",
]

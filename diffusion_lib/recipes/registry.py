"""The registry: every shipped checkpoint's recipe, in the order `make checkpoints`
trains them (each after the ones it needs)."""

from __future__ import annotations

from .scenes_clip import CLIP_RECIPE
from .scenes_controlnet import CONTROLNET
from .scenes_decoder import DECODER
from .scenes_inpaint import INPAINT
from .scenes_inversion import INVERSION
from .scenes_ldm import LDM
from .scenes_lora import LORA
from .scenes_prior import PRIOR
from .scenes_upsampler import UPSAMPLER
from .scenes_vae import VAE
from .shapes import DDPM, EVALUATOR

RECIPES = {
    r.name: r
    for r in (
        EVALUATOR,
        DDPM,
        VAE,
        CLIP_RECIPE,
        LDM,
        PRIOR,
        UPSAMPLER,
        DECODER,
        LORA,
        INVERSION,
        INPAINT,
        CONTROLNET,
    )
}
PART_IV = tuple(name for name, r in RECIPES.items() if r.chapter >= 11)

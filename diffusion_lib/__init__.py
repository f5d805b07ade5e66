"""diffusion_lib: the small library shared by every chapter of "Diffusion models from
scratch".

One concept per module, in layers that stand on each other without cycles: maths
(schedules, forward, samplers); models (unet, vae, clip, prior, unclip, controlnet,
adapters); pipelines, loaders and interop; data, judge, metrics, viz; training (train,
train_parts, scale) and the recipes that ship the checkpoints (recipes/, pretrained).
Inference never imports training code. Notebooks derive each piece from scratch, then
use the version here.
"""

from .schedules import NoiseSchedule, extract
from .setup import RunMode, setup

__version__ = "0.1.0"
__all__ = ["NoiseSchedule", "extract", "setup", "RunMode", "__version__"]

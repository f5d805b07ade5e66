"""diffusion_lib: the small library shared by every chapter of "Diffusion models from
scratch".

One concept per module: schedules, forward, samplers, unet, train, data, metrics, viz,
pretrained, recipes, exercises. Notebooks derive each piece from scratch, then use the
version here.
"""

from .schedules import NoiseSchedule, extract
from .setup import RunMode, setup

__version__ = "0.1.0"
__all__ = ["NoiseSchedule", "extract", "setup", "RunMode", "__version__"]

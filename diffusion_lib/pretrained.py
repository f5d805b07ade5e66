"""The small checkpoints shipped with the course, in diffusion_lib/pretrained/.

Each is NAME.safetensors (weights, fp16) beside NAME.json (recipe, config, seed,
training time and hardware, measured metrics, sha256). They are written only by
`python -m diffusion_lib.recipes NAME`. Loading verifies the hash and fails with a clear
message (naming that command) when a file is missing or corrupt.
"""

from __future__ import annotations

from pathlib import Path

from .checkpoints import load_checkpoint, load_into, read_manifest, rebuild_command
from .clip import CLIP
from .metrics import Evaluator
from .prior import DiffusionPrior
from .schedules import NoiseSchedule
from .unclip import UnCLIPDecoder, UnCLIPUpsampler
from .unet import UNet
from .vae import AutoencoderKL

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
# the class each checkpoint builds: cls(cls.config_class.from_dict(manifest["config"]))
BUILDERS = {
    "shapes-evaluator": Evaluator,
    "shapes-ddpm": UNet,
    "scenes-vae": AutoencoderKL,
    "scenes-clip": CLIP,
    "scenes-ldm": UNet,
    "scenes-decoder": UnCLIPDecoder,
    "scenes-prior": DiffusionPrior,
    "scenes-upsampler": UnCLIPUpsampler,
    "scenes-inpaint": UNet,
}

# adapters of the mini SD (chapter 11): tensors, not whole models; loaded by
# pipe.load_lora_weights / pipe.load_textual_inversion / pipe.load_controlnet
# (diffusion_lib.loaders)
ADAPTERS = ("scenes-lora", "scenes-inversion", "scenes-controlnet")


def available() -> list[str]:
    """Names of the checkpoints present in the pretrained folder."""
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.safetensors"))


def checkpoint_path(
    name: str,
    directory: str | Path | None = None,
    step: int | None = None,
    twin: str | None = None,
) -> Path:
    """DIRECTORY/NAME.safetensors; with `step`, the checkpoint its recipe kept at that
    step of its run (a training budget, chapter 10): DIRECTORY/budgets/NAME-STEP; with
    `twin` too, the twin its recipe trained for that many steps beside it, one thing
    changed (e.g. the upsampler predicting eps): DIRECTORY/budgets/NAME-TWIN-STEP."""
    if name not in BUILDERS and name not in ADAPTERS:
        raise ValueError(
            f"unknown checkpoint {name!r}; expected one of "
            f"{sorted(BUILDERS) + list(ADAPTERS)}"
        )
    base = Path(directory or PRETRAINED_DIR)
    if twin is not None and step is None:
        raise ValueError(f"a twin is kept at a step: pass step with twin={twin!r}")
    if step is None:
        return base / f"{name}.safetensors"
    label = name if twin is None else f"{name}-{twin}"
    return base / "budgets" / f"{label}-{step}.safetensors"


def manifest(name: str, directory: str | Path | None = None) -> dict:
    """The manifest of a shipped checkpoint (without loading the weights)."""
    return read_manifest(checkpoint_path(name, directory).with_suffix(".json"), name)


def load_pretrained(
    name: str,
    device=None,
    directory: str | Path | None = None,
    step: int | None = None,
    twin: str | None = None,
):
    """(model in eval mode, manifest) for a shipped checkpoint, hash-checked; with
    `step` (and `twin`), the one its recipe kept at that step (checkpoint_path)."""
    if name in ADAPTERS:
        raise ValueError(
            f"{name} is an adapter, not a model: load it into a pipeline "
            "(pipe.load_lora_weights / load_textual_inversion / load_controlnet)"
        )
    path = checkpoint_path(name, directory, step, twin)
    state, info = load_checkpoint(path, recipe=name)
    try:
        cls = BUILDERS[name]
        model = cls(cls.config_class.from_dict(info["config"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"checkpoint manifest {path.with_suffix('.json')} has a config that builds "
            f"no {name} ({type(err).__name__}: {err}); rebuild it with "
            f"`{rebuild_command(name)}`"
        ) from err
    load_into(model, state, path, name)
    return model.to(device or "cpu").eval().requires_grad_(False), info


def schedule_from_manifest(info: dict) -> NoiseSchedule:
    """The noise schedule a diffusion checkpoint was trained with."""
    return NoiseSchedule.make(
        info["schedule"]["kind"], info["schedule"]["num_timesteps"]
    )

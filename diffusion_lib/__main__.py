"""The course's command line: generate images from a prompt with a shipped pipeline.

    python -m diffusion_lib generate \\
        "a small red circle to the left of a large blue square" \\
        --num-images 8 --seed 0 --out grid.png
    python -m diffusion_lib generate "a green triangle above a yellow circle" \\
        --out samples/

OUT ending in .png receives one grid image; any other OUT is a folder that receives one
PNG per image (img_000.png, ...) at the model's resolution. Runs offline, on the CPU
unless --device says otherwise. `--model` picks the pipeline: "sd", the mini Stable
Diffusion (Part II), or "dalle2", the mini DALL-E 2 / unCLIP (Part III), which can also
make variations of an image instead of following a prompt:

    python -m diffusion_lib generate --model dalle2 --variations scene.png --out var.png

The mini SD also takes Part IV's adapters and editing modes (chapters 11-13):

    python -m diffusion_lib generate "a red diamond" --lora               # new word
    python -m diffusion_lib generate "a blue square" --init-image a.png --strength 0.6
    python -m diffusion_lib generate "a red circle above a green square" \\
        --init-image a.png --mask mask.png       # inpaint where the mask is white
    python -m diffusion_lib generate "a yellow triangle" --control layout.png

A mask or control image is read as grey levels (white = 1) at 64x64.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

MODELS = ("sd", "dalle2")


def load_pipeline(model: str, device: str, checkpoints: str | None):
    """The pipeline named `model`, from the shipped checkpoints (or `checkpoints`)."""
    if model == "sd":
        from .pipelines import MiniStableDiffusion

        return MiniStableDiffusion.from_pretrained(device, checkpoints)
    if model == "dalle2":
        from .pipelines import MiniDALLE2

        return MiniDALLE2.from_pretrained(device, checkpoints)
    raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def _non_negative(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m diffusion_lib",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="images from a prompt")
    gen.add_argument(
        "prompt",
        nargs="?",
        help='e.g. "a large green triangle above a red circle" (or use --variations)',
    )
    gen.add_argument(
        "--variations",
        metavar="IMAGE",
        default=None,
        help="dalle2 only: variations of this image (PNG/JPEG, resized to 64x64) "
        "instead of a prompt",
    )
    gen.add_argument(
        "--num-images", type=_positive(int), default=8, help="how many (default 8)"
    )
    gen.add_argument("--seed", type=int, default=0, help="same seed, same images")
    gen.add_argument(
        "--out", default="generated.png", help="a .png file (a grid) or a folder"
    )
    gen.add_argument("--steps", type=_positive(int), default=50, help="DDIM steps")
    gen.add_argument(
        "--guidance-scale",
        type=_non_negative,
        default=None,
        help="classifier-free guidance scale (default: the model's)",
    )
    gen.add_argument(
        "--model",
        choices=MODELS,
        default="sd",
        help="sd: the mini Stable Diffusion; dalle2: the mini DALL-E 2 (unCLIP)",
    )
    part4 = gen.add_argument_group("sd only (chapters 11-13)")
    part4.add_argument("--lora", nargs="?", const="scenes-lora", default=None,
                       metavar="NAME", help="load a shipped LoRA adapter (default "
                       "scenes-lora, which knows the word 'diamond')")  # fmt: skip
    part4.add_argument("--lora-scale", type=_non_negative, default=1.0,
                       help="the adapter's strength (default 1)")  # fmt: skip
    part4.add_argument("--embedding", nargs="?", const="scenes-inversion",
                       default=None, metavar="NAME", help="load a shipped textual-"
                       "inversion word (default scenes-inversion)")  # fmt: skip
    part4.add_argument("--init-image", metavar="IMAGE", default=None,
                       help="image-to-image (with --strength) or inpainting (with "
                       "--mask) from this image")  # fmt: skip
    part4.add_argument(
        "--strength",
        type=float,
        default=0.6,
        help="image-to-image: how far to noise the image, in (0, 1]",
    )
    part4.add_argument(
        "--mask",
        metavar="IMAGE",
        default=None,
        help="inpaint where this mask is white (needs --init-image)",
    )
    part4.add_argument("--inpaint-method", choices=("unet", "repaint"), default="unet",
                       help="unet: the shipped mask-conditioned scenes-inpaint; "
                       "repaint: training-free, with the mini SD itself")  # fmt: skip
    part4.add_argument("--control", metavar="IMAGE", default=None,
                       help="a layout mask (white = shapes) for the shipped "
                       "scenes-controlnet")  # fmt: skip
    gen.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    gen.add_argument(
        "--checkpoints",
        default=None,
        help="folder of checkpoints (default: the shipped ones)",
    )
    parser.subcommands = {"generate": gen}  # for errors with the right usage line
    return parser


def save_images(images: torch.Tensor, out: str | Path) -> list[Path]:
    """Write images [N, 3, H, W] in [-1, 1]: one grid if `out` ends in .png, else one
    PNG per image into the folder `out`. Returns the paths written."""
    from torchvision.utils import save_image

    out, x = Path(out), (images.float().clamp(-1, 1) + 1) / 2
    if out.suffix.lower() == ".png":
        out.parent.mkdir(parents=True, exist_ok=True)
        save_image(x, out, nrow=min(8, len(x)), padding=2, pad_value=1.0)
        return [out]
    if out.suffix:
        raise ValueError(f"--out must end in .png (a grid) or name a folder, got {out}")
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"img_{i:03d}.png" for i in range(len(x))]
    for image, path in zip(x, paths):
        save_image(image, path)
    return paths


def load_image(path: str | Path, size: int = 64) -> torch.Tensor:
    """An image file as [1, 3, size, size] in [-1, 1] (RGB, resized with
    antialiasing)."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.functional import pil_to_tensor, resize

    try:
        with Image.open(path) as image:
            x = pil_to_tensor(image.convert("RGB")).float() / 255
    except (FileNotFoundError, UnidentifiedImageError, IsADirectoryError) as err:
        raise ValueError(f"cannot read an image from {path}: {err}") from err
    x = resize(x, [size, size], antialias=True)
    return (x * 2 - 1).clamp(-1, 1)[None]


def load_mask(path: str | Path, size: int = 64) -> torch.Tensor:
    """A mask or control image as [1, 1, size, size] grey levels in [0, 1]."""
    return ((load_image(path, size) + 1) / 2).mean(1, keepdim=True)


SD_ONLY = ("lora", "embedding", "init_image", "mask", "control")


def _check_request(args, parser) -> None:
    if args.variations is not None and args.model != "dalle2":
        parser.error("--variations needs --model dalle2 (only unCLIP decodes images)")
    if (args.prompt is None) == (args.variations is None):
        parser.error("give a prompt or --variations IMAGE (one of them)")
    used = [f"--{k.replace('_', '-')}" for k in SD_ONLY if getattr(args, k) is not None]
    if used and args.model != "sd":
        parser.error(f"{', '.join(used)} work with --model sd only")
    if args.mask is not None and args.init_image is None:
        parser.error("--mask needs --init-image (the image to inpaint)")
    if not 0 < args.strength <= 1:
        parser.error(f"--strength must be in (0, 1], got {args.strength}")
    if args.control is not None and args.init_image is not None:
        parser.error("--control cannot be combined with --init-image")


def _add_adapters(pipe, args) -> None:
    from . import adapters, finetune

    if args.lora is not None:
        finetune.load_lora_weights(pipe, args.lora, args.checkpoints)
        adapters.set_lora_scale(pipe.unet, args.lora_scale)
    if args.embedding is not None:
        finetune.load_textual_inversion(pipe, args.embedding, args.checkpoints)
    if args.control is not None:
        finetune.load_controlnet(pipe, directory=args.checkpoints)


def _run(pipe, args) -> torch.Tensor:
    kwargs = {"num_steps": args.steps, "guidance_scale": args.guidance_scale,
              "seed": args.seed}  # fmt: skip
    n = args.num_images
    if args.variations is not None:
        return pipe.variations(load_image(args.variations), n, progress=True, **kwargs)
    prompts = [args.prompt] * n
    if args.control is not None:
        control = load_mask(args.control).repeat(n, 1, 1, 1)
        return pipe(prompts, control=control, progress=True, **kwargs)
    if args.init_image is None:
        return pipe(prompts, progress=True, **kwargs)
    image = load_image(args.init_image).repeat(n, 1, 1, 1)
    if args.mask is None:
        return pipe.img2img(image, prompts, args.strength, **kwargs)
    from . import editing, finetune

    mask = (load_mask(args.mask) > 0.5).float().repeat(n, 1, 1, 1)
    if args.inpaint_method == "repaint":
        return editing.repaint(pipe, image, mask, prompts, **kwargs)
    model, _ = finetune.load_inpainting(args.checkpoints, pipe.device)
    return editing.inpaint(pipe, model, image, mask, prompts, **kwargs)


def generate(args, parser) -> list[Path]:
    from .clip import UnknownWordError

    _check_request(args, parser)
    try:
        pipe = load_pipeline(args.model, args.device, args.checkpoints)
        if args.model == "sd":
            _add_adapters(pipe, args)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    start = time.perf_counter()
    try:
        images = _run(pipe, args)
    except UnknownWordError as err:
        parser.error(str(err))
    except ValueError as err:  # e.g. a prompt too long for the context
        parser.error(str(err))
    try:
        paths = save_images(images, args.out)
    except ValueError as err:
        parser.error(str(err))
    seconds = time.perf_counter() - start
    where = paths[0] if len(paths) == 1 else f"{args.out}/ ({len(paths)} files)"
    print(f"wrote {where} in {seconds:.1f} s", file=sys.stderr)
    return paths


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "generate":
        generate(args, parser.subcommands["generate"])


if __name__ == "__main__":
    main()

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


def _check_request(args, parser) -> None:
    if args.variations is not None and args.model != "dalle2":
        parser.error("--variations needs --model dalle2 (only unCLIP decodes images)")
    if (args.prompt is None) == (args.variations is None):
        parser.error("give a prompt or --variations IMAGE (one of them)")


def _run(pipe, args) -> torch.Tensor:
    kwargs = {"num_steps": args.steps, "guidance_scale": args.guidance_scale,
              "seed": args.seed, "progress": True}  # fmt: skip
    if args.variations is not None:
        return pipe.variations(load_image(args.variations), args.num_images, **kwargs)
    return pipe([args.prompt] * args.num_images, **kwargs)


def generate(args, parser) -> list[Path]:
    from .clip import UnknownWordError

    _check_request(args, parser)
    try:
        pipe = load_pipeline(args.model, args.device, args.checkpoints)
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

"""The course's command line: generate images from a prompt with a shipped pipeline,
and export the mini SD to (or import it from) diffusers' format.

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

The mini SD as an ordinary Stable Diffusion, for diffusers (chapter 8):

    python -m diffusion_lib export --model sd --out mini-sd --lora --controlnet
    python -m diffusion_lib import mini-sd --out my-checkpoints

Nothing is overwritten or mixed: an existing grid file, or a folder that already holds
files, is refused unless --overwrite is given (a folder then loses its old img_*.png);
files are written under a temporary name and renamed into place. Every input is checked
before any sampling, and images are drawn in batches of at most 16 (the first 16 from
--seed, each further batch from the next seed), so memory stays bounded.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

import torch

MODELS = ("sd", "dalle2")
BATCH = 16  # images sampled at once
MAX_IMAGES = 10_000  # per run
MAX_GRID = 256  # images in one grid file
MAX_STEPS = 1000  # the schedules have 1000 timesteps
GUIDANCE_RANGE = (0.0, 50.0)  # beyond ~30 the mini models draw saturated noise
LORA_SCALE_RANGE = (0.0, 4.0)
MAX_INPUT_PIXELS = 4096 * 4096  # an input image larger than this is refused


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
    gen.add_argument(
        "--seed", type=int, default=0, help="same seed, same images (0 to 2**32 - 1)"
    )
    gen.add_argument(
        "--out", default="generated.png", help="a .png file (a grid) or a folder"
    )
    gen.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing grid file, or the img_*.png of a folder",
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
    part4.add_argument(
        "--lora",
        nargs="?",
        const="scenes-lora",
        default=None,
        metavar="NAME",
        help="load a shipped LoRA adapter (default "
        "scenes-lora, which knows the word 'diamond')",
    )
    part4.add_argument(
        "--lora-scale",
        type=_non_negative,
        default=None,
        help="the adapter's strength, 0 to 4 (default 1)",
    )
    part4.add_argument(
        "--embedding",
        nargs="?",
        const="scenes-inversion",
        default=None,
        metavar="NAME",
        help="load a shipped textual-inversion word (default scenes-inversion)",
    )
    part4.add_argument(
        "--init-image",
        metavar="IMAGE",
        default=None,
        help="image-to-image (with --strength) or inpainting (with "
        "--mask) from this image",
    )
    part4.add_argument(
        "--strength",
        type=float,
        default=None,
        help="image-to-image: how far to noise the image, in (0, 1] (default 0.6)",
    )
    part4.add_argument(
        "--mask",
        metavar="IMAGE",
        default=None,
        help="inpaint where this mask is white (needs --init-image)",
    )
    part4.add_argument(
        "--inpaint-method",
        choices=("unet", "repaint"),
        default=None,
        help="unet (default): the shipped mask-conditioned "
        "scenes-inpaint; repaint: training-free, with the mini SD "
        "itself",
    )
    part4.add_argument(
        "--control",
        metavar="IMAGE",
        default=None,
        help="a layout mask (white = shapes) for the shipped scenes-controlnet",
    )
    gen.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    gen.add_argument(
        "--checkpoints",
        default=None,
        help="folder of checkpoints (default: the shipped ones)",
    )
    exp = commands.add_parser(
        "export",
        help="the mini SD as a standard diffusers folder (and its extensions)",
        description="Write the mini SD as an ordinary Stable Diffusion folder that "
        "diffusers' StableDiffusionPipeline.from_pretrained(OUT) loads without the "
        "course; each option adds an extension in diffusers' format inside OUT.",
    )
    exp.add_argument(
        "--model",
        choices=MODELS,
        default="sd",
        help="sd: the mini SD; dalle2: the mini DALL-E 2's prior, decoder, upsampler, "
        "text encoder, tokenizer and schedulers (a first-recipe decoder is left out)",
    )
    exp.add_argument("--out", required=True, help="the folder to write")
    exp.add_argument("--overwrite", action="store_true", help="replace OUT")
    for flag, default, what in (
        ("--lora", "scenes-lora", "OUT/lora: for pipe.load_lora_weights"),
        ("--embedding", "scenes-inversion", "OUT/embedding: load_textual_inversion"),
        ("--controlnet", "scenes-controlnet", "OUT/controlnet: a ControlNetModel"),
    ):
        exp.add_argument(flag, nargs="?", const=default, default=None, help=what)
    exp.add_argument(
        "--inpaint",
        action="store_true",
        help="OUT/inpaint: a StableDiffusionInpaintPipeline (scenes-inpaint)",
    )
    exp.add_argument("--checkpoints", default=None, help="default: the shipped ones")
    imp = commands.add_parser(
        "import",
        help="a diffusers SD folder as the course's checkpoints",
        description="Read a Stable Diffusion folder in diffusers' format (as export "
        "writes) back into the course's modules, saved as scenes-ldm, scenes-vae "
        "and scenes-clip checkpoints in OUT (use them with generate --checkpoints).",
    )
    imp.add_argument("folder", help="a diffusers StableDiffusionPipeline folder")
    imp.add_argument("--out", required=True, help="the checkpoint folder to write")
    imp.add_argument("--guidance-scale", type=_non_negative, default=3.0)
    parser.subcommands = {"generate": gen, "export": exp, "import": imp}
    return parser


def export(args, parser) -> None:
    from .interop import export_all

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            parser.error(f"{out} exists and is not empty (use --overwrite)")
        shutil.rmtree(out)
    try:
        written = export_all(
            out,
            args.checkpoints,
            model=args.model,
            lora=args.lora,
            embedding=args.embedding,
            controlnet=args.controlnet,
            inpaint=args.inpaint,
        )
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    for part, paths in written.items():
        print(f"{part}: {', '.join(map(str, paths))}", file=sys.stderr)
    exported = {path.name for paths in written.values() for path in paths}
    if args.model == "dalle2" and "decoder" not in exported:
        from .interop import DALLE2_DECODER_NOTE

        print(DALLE2_DECODER_NOTE, file=sys.stderr)


def import_(args, parser) -> None:
    from .interop import import_to_checkpoints

    try:
        paths = import_to_checkpoints(args.folder, args.out, args.guidance_scale)
    except (FileNotFoundError, KeyError, ValueError) as err:
        parser.error(str(err))
    print("wrote " + ", ".join(map(str, paths)), file=sys.stderr)


def save_images(images: torch.Tensor, out: str | Path) -> list[Path]:
    """Write images [N, 3, H, W] in [-1, 1]: one grid if `out` ends in .png, else one
    PNG per image into the folder `out`. Returns the paths written. (The command line
    goes through `Output`, which never overwrites or mixes runs.)"""
    output = Output(out, len(images), overwrite=True)
    try:
        output.add(images)
        return output.finish()
    finally:
        output.discard()


class Output:
    """Where `generate` writes: checked and reserved before any sampling (a temporary
    file or folder beside `out`), filled batch by batch, then renamed into place. An
    existing grid file, or a folder holding anything, is refused unless `overwrite`
    (a folder may then hold only img_*.png, which are replaced). ValueError says why."""

    def __init__(self, out, n: int, overwrite: bool = False):
        self.out, self.n, self.overwrite = Path(out), n, overwrite
        self.grid = self.out.suffix.lower() == ".png"
        if self.out.suffix and not self.grid:
            raise ValueError(
                f"--out must end in .png (a grid) or name a folder, got {self.out}"
            )
        if self.grid and n > MAX_GRID:
            raise ValueError(
                f"a grid holds at most {MAX_GRID} images, asked for {n}: "
                "write them to a folder (an --out without .png)"
            )
        self._check_target()
        parent = self.out.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            if self.grid:
                fd, tmp = tempfile.mkstemp(
                    prefix=f".{self.out.name}.", suffix=".tmp", dir=parent
                )
                os.close(fd)
                self.tmp = Path(tmp)
            else:
                self.tmp = Path(
                    tempfile.mkdtemp(
                        prefix=f".{self.out.name}.", suffix=".tmp", dir=parent
                    )
                )
        except OSError as err:
            raise ValueError(
                f"cannot write to {parent}: {err.strerror or err}"
            ) from err
        self.images, self.written = [], 0

    def _check_target(self) -> None:
        out = self.out
        if self.grid:
            if out.is_dir():
                raise ValueError(f"--out {out} is a folder; a grid needs a file name")
            if out.exists() and not self.overwrite:
                raise ValueError(f"{out} exists; pass --overwrite to replace it")
            return
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file, not a folder")
        if out.is_dir():
            held = list(out.iterdir())
            if held and not self.overwrite:
                raise ValueError(
                    f"{out} already holds {len(held)} files; pass "
                    "--overwrite to replace its images, or another folder"
                )
            other = [p.name for p in held if not re.fullmatch(r"img_\d+\.png", p.name)]
            if other:
                raise ValueError(
                    f"{out} holds other files than img_*.png "
                    f"({', '.join(sorted(other)[:3])}); not overwriting"
                )

    def add(self, images: torch.Tensor) -> None:
        """Keep (grid) or write (folder) one batch of images in [-1, 1]."""
        from torchvision.utils import save_image

        x = (images.detach().float().cpu().clamp(-1, 1) + 1) / 2
        if self.grid:
            self.images.append(x)
            return
        for image in x:
            save_image(image, self.tmp / f"img_{self.written:03d}.png")
            self.written += 1

    def finish(self) -> list[Path]:
        """Move the result into place (atomically); the paths written."""
        from torchvision.utils import save_image

        if self.grid:
            x = torch.cat(self.images)
            save_image(
                x, self.tmp, format="png", nrow=min(8, len(x)), padding=2, pad_value=1.0
            )
            if self.overwrite:
                os.replace(self.tmp, self.out)
            else:
                try:
                    os.link(self.tmp, self.out)  # fails if someone wrote it meanwhile
                except FileExistsError as err:
                    raise ValueError(
                        f"{self.out} appeared while sampling; the images "
                        f"are kept in {self.tmp}"
                    ) from err
                self.tmp.unlink()
            return [self.out]
        paths = sorted(self.tmp.glob("img_*.png"))
        old = None
        if self.out.is_dir() and any(self.out.iterdir()):
            if not self.overwrite:
                raise ValueError(
                    f"{self.out} was filled while sampling; the images are "
                    f"kept in {self.tmp}"
                )
            self._check_target()
            old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            os.rename(self.out, old)
        try:
            os.rename(self.tmp, self.out)  # an empty folder is replaced atomically
        except OSError as err:
            if old is not None:
                os.rename(old, self.out)
            raise ValueError(
                f"cannot move the images into {self.out}: {err}; they are "
                f"kept in {self.tmp}"
            ) from err
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return [self.out / p.name for p in paths]

    def discard(self) -> None:
        """Remove the temporary file or folder (after a failure, or after finish)."""
        if self.tmp.is_dir():
            shutil.rmtree(self.tmp, ignore_errors=True)
        elif self.tmp.exists():
            self.tmp.unlink()


def load_image(path: str | Path, size: int = 64) -> torch.Tensor:
    """An image file as [1, 3, size, size] in [-1, 1] (RGB, resized with
    antialiasing). ValueError for a missing, unreadable, truncated or huge file."""
    import warnings

    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.functional import pil_to_tensor, resize

    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise ValueError(f"cannot read an image from {path}: it {what}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                w, h = image.size
                if w * h > MAX_INPUT_PIXELS:
                    raise ValueError(
                        f"cannot read an image from {path}: it is {w}x{h}, "
                        f"larger than {MAX_INPUT_PIXELS:,} pixels"
                    )
                image.load()  # decode now: a truncated file fails here
                x = pil_to_tensor(image.convert("RGB")).float() / 255
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ValueError(
            f"cannot read an image from {path}: it is larger than "
            f"{MAX_INPUT_PIXELS:,} pixels ({err})"
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot read an image from {path}: {err}") from err
    x = resize(x, [size, size], antialias=True)
    return (x * 2 - 1).clamp(-1, 1)[None]


def load_mask(path: str | Path, size: int = 64) -> torch.Tensor:
    """A mask or control image as [1, 1, size, size] grey levels in [0, 1]."""
    return ((load_image(path, size) + 1) / 2).mean(1, keepdim=True)


def normalise_prompt(prompt: str) -> str:
    """The prompt in Unicode NFKC form (full-width letters become ASCII); ValueError
    naming, as typed, every word that still holds a character the mini models'
    vocabulary cannot have (accents included: they are not dropped silently)."""
    text = unicodedata.normalize("NFKC", prompt)
    odd = [w for w in prompt.split() if not unicodedata.normalize("NFKC", w).isascii()]
    if odd:
        raise ValueError(
            f"the prompt has words the mini models cannot read: "
            f"{', '.join(repr(w) for w in odd)} (their vocabulary is plain English "
            "words in ASCII letters)"
        )
    if not text.strip():
        raise ValueError("the prompt is empty")
    return text


def check_device(name: str) -> str:
    """`name` if it is a device this machine has; ValueError otherwise."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise ValueError(
            f"unknown device {name!r}: expected cpu, cuda, cuda:N or mps"
        ) from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA GPU here (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {name}: this machine has "
                f"{torch.cuda.device_count()} CUDA GPU(s)"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: no Apple GPU (MPS) here")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name}: expected cpu, cuda, cuda:N or mps")
    return name


SD_ONLY = ("lora", "embedding", "init_image", "mask", "control")


def _check_request(args, parser) -> None:
    """Every option checked, and every input read, before anything is loaded or
    sampled: one clear line per mistake."""
    if args.variations is not None and args.model != "dalle2":
        parser.error("--variations needs --model dalle2 (only unCLIP decodes images)")
    if (args.prompt is None) == (args.variations is None):
        parser.error("give a prompt or --variations IMAGE (one of them)")
    used = [f"--{k.replace('_', '-')}" for k in SD_ONLY if getattr(args, k) is not None]
    if used and args.model != "sd":
        parser.error(f"{', '.join(used)} work with --model sd only")
    if args.mask is not None and args.init_image is None:
        parser.error("--mask needs --init-image (the image to inpaint)")
    if args.control is not None and args.init_image is not None:
        parser.error("--control cannot be combined with --init-image")
    # options that would do nothing here are mistakes, not silently ignored
    if args.lora_scale is not None and args.lora is None:
        parser.error("--lora-scale needs --lora (there is no adapter to scale)")
    if args.strength is not None and (args.init_image is None or args.mask):
        parser.error(
            "--strength is for image-to-image only (--init-image without --mask)"
        )
    if args.inpaint_method is not None and args.mask is None:
        parser.error(
            "--inpaint-method is for inpainting only (--init-image and --mask)"
        )
    if (
        args.lora is not None
        and args.mask is not None
        and args.inpaint_method != "repaint"
    ):
        parser.error(
            "--lora has no effect on the inpainting UNet (a separate model, "
            "trained without the adapter): add --inpaint-method repaint, "
            "which inpaints with the mini SD and its adapter"
        )
    strength = 0.6 if args.strength is None else args.strength
    if not 0 < strength <= 1:
        parser.error(f"--strength must be in (0, 1], got {args.strength}")
    args.strength = strength
    args.inpaint_method = args.inpaint_method or "unet"
    lo, hi = LORA_SCALE_RANGE
    if args.lora_scale is not None and not lo <= args.lora_scale <= hi:
        parser.error(
            f"--lora-scale must be from {lo:g} to {hi:g}, got {args.lora_scale}"
        )
    args.lora_scale = 1.0 if args.lora_scale is None else args.lora_scale
    lo, hi = GUIDANCE_RANGE
    if args.guidance_scale is not None and not lo <= args.guidance_scale <= hi:
        parser.error(
            f"--guidance-scale must be from {lo:g} to {hi:g} (beyond, the "
            f"images saturate), got {args.guidance_scale}"
        )
    if not 0 <= args.seed < 2**32:
        parser.error(
            f"--seed must be from 0 to 2**32 - 1 = {2**32 - 1}, got {args.seed}"
        )
    if args.num_images > MAX_IMAGES:
        parser.error(
            f"--num-images is at most {MAX_IMAGES:,} per run, got {args.num_images:,}"
        )
    if args.steps > MAX_STEPS:
        parser.error(
            f"--steps is at most {MAX_STEPS} (the schedule's timesteps), got "
            f"{args.steps}"
        )
    try:
        if args.prompt is not None:
            args.prompt = normalise_prompt(args.prompt)
        check_device(args.device)
        args.images = {
            k: (load_mask if k in ("mask", "control") else load_image)(getattr(args, k))
            for k in ("variations", "init_image", "mask", "control")
            if getattr(args, k) is not None
        }
    except ValueError as err:
        parser.error(str(err))


def _add_adapters(pipe, args) -> None:
    from . import adapters

    if args.control is not None:  # first: it copies the UNet without LoRA layers
        pipe.load_controlnet(directory=args.checkpoints)
    if args.lora is not None:
        pipe.load_lora_weights(args.lora, args.checkpoints)
        adapters.set_lora_scale(pipe.unet, args.lora_scale)
    if args.embedding is not None:
        pipe.load_textual_inversion(args.embedding, args.checkpoints)


def _run(pipe, args, n: int, seed: int) -> torch.Tensor:
    """One batch of n images."""
    kwargs = {
        "num_steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "seed": seed,
    }
    images = args.images
    if args.variations is not None:
        return pipe.variations(images["variations"], n, progress=True, **kwargs)
    prompts = [args.prompt] * n
    if args.control is not None:
        control = images["control"].repeat(n, 1, 1, 1)
        return pipe(prompts, control=control, progress=True, **kwargs)
    if args.init_image is None:
        return pipe(prompts, progress=True, **kwargs)
    image = images["init_image"].repeat(n, 1, 1, 1)
    if args.mask is None:
        return pipe.img2img(image, prompts, args.strength, **kwargs)
    from . import editing, loaders

    mask = (images["mask"] > 0.5).float().repeat(n, 1, 1, 1)
    if args.inpaint_method == "repaint":
        return editing.repaint(pipe, image, mask, prompts, **kwargs)
    if not hasattr(args, "_inpaint_model"):
        args._inpaint_model, _ = loaders.load_inpainting(args.checkpoints, pipe.device)
    return editing.inpaint(pipe, args._inpaint_model, image, mask, prompts, **kwargs)


def generate(args, parser) -> list[Path]:
    from .clip import UnknownWordError

    _check_request(args, parser)
    try:
        output = Output(args.out, args.num_images, args.overwrite)
    except ValueError as err:
        parser.error(str(err))
    try:
        try:
            pipe = load_pipeline(args.model, args.device, args.checkpoints)
            if args.model == "sd":
                _add_adapters(pipe, args)
        except (FileNotFoundError, ValueError) as err:
            parser.error(str(err))
        start = time.perf_counter()
        try:
            for k, first in enumerate(range(0, args.num_images, BATCH)):
                n = min(BATCH, args.num_images - first)
                output.add(_run(pipe, args, n, args.seed + k))
            paths = output.finish()
        except (UnknownWordError, ValueError) as err:  # e.g. a prompt too long
            parser.error(str(err))
        except (OSError, RuntimeError, MemoryError) as err:  # disk full, out of memory
            parser.error(f"generation failed: {type(err).__name__}: {err}")
    finally:
        output.discard()
    seconds = time.perf_counter() - start
    where = paths[0] if output.grid else f"{args.out}/ ({len(paths)} files)"
    print(f"wrote {where} in {seconds:.1f} s", file=sys.stderr)
    return paths


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "generate":
        generate(args, parser.subcommands["generate"])
    elif args.command == "export":
        export(args, parser.subcommands["export"])
    elif args.command == "import":
        import_(args, parser.subcommands["import"])


if __name__ == "__main__":
    main()

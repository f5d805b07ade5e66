"""The command line: python -m diffusion_lib.recipes NAME [NAME ...] [--quick] [--out
DIR] [--stage S] (see diffusion_lib.recipes)."""

from __future__ import annotations

import argparse

from .. import scale
from .base import STAGES
from .registry import RECIPES
from .shapes import ablation

USAGE = """Train a shipped checkpoint with its recipe, measure it, and write
NAME.safetensors + NAME.json (see diffusion_lib.recipes):

    python -m diffusion_lib.recipes shapes-ddpm
    python -m diffusion_lib.recipes shapes-ddpm --stage measure  # re-measure only
    python -m diffusion_lib.recipes scenes-vae scenes-clip --quick --out /tmp/ckpt
    python -m diffusion_lib.recipes all  # every recipe, in order
    accelerate launch --multi_gpu --num_processes 4 -m diffusion_lib.recipes scenes-ldm
"""


def _supported(what: str, value: str) -> list[str]:
    """The recipes that take --stage VALUE (what="stage") or --device VALUE."""
    if what == "stage":
        return [n for n, r in RECIPES.items() if value in r.stages]
    return [n for n, r in RECIPES.items() if value.split(":")[0] in r.devices]


def parse(argv=None) -> argparse.Namespace:
    listing = "\n".join(
        f"  {n:18s} chapter {r.chapter:2d}: {r.builds}" for n, r in RECIPES.items()
    )
    parser = argparse.ArgumentParser(
        prog="python -m diffusion_lib.recipes",
        description=f"{USAGE}\nrecipes:\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "names",
        nargs="+",
        metavar="name",
        choices=[*RECIPES, "all", "ablation"],
        help="one or more recipes, run in the order given; 'all': every recipe, in "
        "the registry's order (each after the checkpoints it needs); or 'ablation'",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=1500,
        help="training steps per variant (ablation only)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a tiny smoke run (for tests)"
    )
    parser.add_argument(
        "--out", default=None, help="output folder (default: diffusion_lib/pretrained)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--stage",
        choices=STAGES,
        default="all",
        help="train, measure (the saved checkpoint), or all; 'train' for the recipes "
        "whose measurement is a separate stage",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="where to train and measure (cpu, cuda), for the recipes that take it; "
        "the manifest records the hardware",
    )
    parser.add_argument(
        "--grad-accum",
        type=int,
        default=1,
        help="gradient accumulation steps, under `accelerate launch` only (see "
        "diffusion_lib.scale)",
    )
    args = parser.parse_args(argv)
    if "all" in args.names:
        if args.names != ["all"]:
            parser.error("'all' runs every recipe: name no other")
        args.names = list(RECIPES)
    if args.grad_accum < 1:
        parser.error(f"--grad-accum must be a positive integer, got {args.grad_accum}")
    if args.grad_accum > 1 and not scale.launched():
        parser.error(
            "--grad-accum works under `accelerate launch` only: "
            f"accelerate launch -m diffusion_lib.recipes {' '.join(args.names)} ..."
        )
    for name in args.names:  # refuse before anything trains
        if name == "ablation":
            continue
        recipe = RECIPES[name]
        if args.stage not in recipe.stages:
            parser.error(
                f"--stage {args.stage} is supported for "
                f"{', '.join(_supported('stage', args.stage))} only, not {name} "
                "(it would train from scratch)"
                if args.stage == "measure"
                else f"--stage {args.stage} is supported for "
                f"{', '.join(_supported('stage', args.stage))} only, not {name} "
                "(it measures in its training run)"
            )
        if args.device.split(":")[0] not in recipe.devices:
            parser.error(
                f"--device {args.device} is supported for "
                f"{', '.join(_supported('device', args.device))} only, not {name}"
            )
    return args


def main(argv=None) -> None:
    args = parse(argv)
    # under `accelerate launch`, one Accelerator for every recipe of the launch
    accelerator = (
        scale.launch_accelerator(args.grad_accum) if scale.launched() else None
    )
    for name in args.names:
        if name == "ablation":
            ablation(quick=args.quick, seed=args.seed, steps=args.steps)
            continue
        options = dict(quick=args.quick, seed=args.seed, stage=args.stage)
        if accelerator is not None:  # accelerate launch -m diffusion_lib.recipes
            info = scale.run_recipe(
                RECIPES[name], args.out, accelerator=accelerator, **options
            )
            if info is None:  # not the main process
                continue
        else:
            info = RECIPES[name].run(args.out, device=args.device, **options)
        print(
            f"wrote {info['file']} ({info['bytes'] / 1e6:.2f} MB, "
            f"sha256 {info['sha256'][:12]}...)"
        )
    if accelerator is not None:
        accelerator.end_training()

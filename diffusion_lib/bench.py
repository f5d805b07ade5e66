"""Training throughput of the recipes' diffusion models, and what speeds it up.

    python -m diffusion_lib.bench --device cuda            # every model and variant
    python -m diffusion_lib.bench --models shapes-ddpm --variants plain bf16

For each model that `diffusion_lib.scale` can train data-parallel (the recipes'
configurations and batch sizes, on random data of the right shapes: the arithmetic, not
the data, sets the speed), this runs `train.train_diffusion` as the recipes do and
reports steps/s and images/s after a warm-up, and the peak GPU memory:

* plain: the single-process loop, float32 (PyTorch's defaults, as the recipes run:
  on Ampere and newer GPUs cuDNN convolutions use TF32);
* no tf32: the same with convolutions in full float32, as the chapters run in gpu mode
  (`setup.full_float32`): the price of their numerical checks;
* bf16: forward passes under bfloat16 autocast (`accelerate launch --mixed_precision
  bf16`); weights, optimizer and EMA stay float32;
* compile: the model compiled by `torch.compile` with the inductor backend (`accelerate
  launch --dynamo_backend inductor`); the compile time is the warm-up's and is reported
  separately;
* bf16+compile: both;
* batch x4: the plain loop with four times the batch (a GPU sits idle at the recipes'
  small batches; more images per step changes the recipe, so it is reported as images/s
  for comparison, not adopted silently).

The accelerated variants run through a single-process `Accelerator`, the same code path
as `accelerate launch`.

    python -m diffusion_lib.bench --notebooks notebooks/0[1-4]*.ipynb --mode gpu

times whole chapters instead, each in a fresh kernel as a reader runs it (headless,
going on after a failing cell, stopped after --timeout seconds), for the chapters'
time-budget tables: seconds, and the cells that failed.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, replace

import torch

from .schedules import NoiseSchedule
from .setup import full_float32
from .train import train_diffusion

VARIANTS = ("plain", "no tf32", "bf16", "compile", "bf16+compile", "batch x4")
# the models trained from scratch by train_diffusion (the upsampler and the Part IV
# models train through other loops or on top of the mini SD)
MODELS = ("shapes-ddpm", "scenes-ldm", "scenes-prior", "scenes-decoder")
CONTEXT_LENGTH = 20  # the scene tokenizer's context length (CLIP's text states)


def _case(name: str, n: int):
    """(model, schedule, images, train_diffusion keyword arguments, TrainConfig) for the
    recipe `name`, on n random examples."""
    from . import recipes
    from .prior import DiffusionPrior
    from .unclip import UnCLIPDecoder
    from .unet import UNet

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # the same initial weights for every variant
    if name == "shapes-ddpm":
        model = UNet(recipes.SHAPES_UNET)
        images = torch.rand(n, 3, 32, 32, generator=g) * 2 - 1
        kwargs = {"labels": model.null_labels(n)}
        cfg, schedule = recipes.SHAPES_TRAIN, recipes.SCHEDULE
    elif name == "scenes-ldm":
        model = UNet(recipes.SCENES_LDM_UNET)
        images = torch.randn(n, 4, 8, 8, generator=g)
        width = recipes.SCENES_LDM_UNET.context_dim
        kwargs = {
            "context": torch.randn(n, CONTEXT_LENGTH, width, generator=g),
            "null_context": torch.zeros(CONTEXT_LENGTH, width),
        }
        cfg, schedule = recipes.SCENES_LDM_TRAIN, recipes.LDM_SCHEDULE
    elif name == "scenes-decoder":
        model = UnCLIPDecoder(recipes.SCENES_DECODER)
        images = torch.rand(n, 3, 32, 32, generator=g) * 2 - 1
        dc = recipes.SCENES_DECODER
        unit = lambda: torch.nn.functional.normalize(  # noqa: E731
            torch.randn(n, dc.embed_dim, generator=g), dim=-1
        )
        mask = torch.ones(n, CONTEXT_LENGTH, dtype=torch.bool)
        e = {  # what clip_embeddings gives the recipe, random
            "image_embed": unit(),
            "text_embed": unit(),
            "text_states": torch.randn(n, CONTEXT_LENGTH, dc.text_width, generator=g),
            "text_mask": mask,
        }
        null = {
            "text_embed": torch.zeros(dc.embed_dim),
            "text_states": torch.zeros(CONTEXT_LENGTH, dc.text_width),
            "text_mask": mask[0],
        }
        kwargs = {
            "conditions": recipes.decoder_conditions(dc, e, null, 0.1),
        }
        cfg, schedule = recipes.SCENES_DECODER_TRAIN, recipes.UNCLIP_SCHEDULE
    elif name == "scenes-prior":
        pc = recipes.SCENES_PRIOR
        model = DiffusionPrior(pc)
        images = torch.randn(n, pc.embed_dim, generator=g)
        states = torch.randn(n, pc.context_length, pc.text_width, generator=g)
        mask = torch.ones(n, pc.context_length, dtype=torch.bool)
        kwargs = {
            "conditions": {
                "text_states": (states, torch.zeros(pc.context_length, pc.text_width)),
                "text_embed": (torch.randn(n, pc.embed_dim), torch.zeros(pc.embed_dim)),
                "text_mask": (mask, mask[0]),
            }
        }
        cfg, schedule = recipes.SCENES_PRIOR_TRAIN, recipes.UNCLIP_SCHEDULE
    else:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    return (
        model,
        NoiseSchedule.make(schedule["kind"], schedule["num_timesteps"]),
        (images, kwargs, cfg),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    name: str, variant: str, device="cpu", warmup=5, steps=20, batch_size=None
) -> dict:
    """One row: steps/s and images/s of `steps` training steps after `warmup` steps
    (which include any compilation), and the peak GPU memory."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    if warmup < 1 or steps < 1:
        raise ValueError(f"warmup and steps must be >= 1, got {warmup} and {steps}")
    device = torch.device(device)
    model, schedule, (images, kwargs, cfg) = _case(name, 512)
    batch = batch_size or cfg.batch_size * (4 if variant == "batch x4" else 1)
    cfg = replace(cfg, steps=warmup + steps, warmup=1, batch_size=batch)
    stamps = []

    def clock(step, ema_model):
        _sync(device)
        stamps.append(time.perf_counter())

    accelerator = None
    if variant in ("bf16", "compile", "bf16+compile"):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(True)
        accelerator = Accelerator(
            cpu=device.type == "cpu",
            mixed_precision="bf16" if "bf16" in variant else "no",
            dynamo_backend="inductor" if "compile" in variant else "no",
        )
    else:
        model = model.to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    labels = kwargs.pop("labels", None)
    restore = full_float32() if variant == "no tf32" else (lambda: None)
    start = time.perf_counter()
    try:
        result = train_diffusion(
            model,
            schedule,
            images,
            labels,
            cfg,
            progress=False,
            callback=clock,
            callback_every=1,
            accelerator=accelerator,  # None: the plain loop
            **kwargs,
        )
    finally:
        restore()
    rate = steps / (stamps[-1] - stamps[warmup - 1])
    return {
        "model": name,
        "variant": variant,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else "cpu",
        "batch_size": batch,
        "steps_per_s": round(rate, 2),
        "images_per_s": round(rate * batch, 1),
        "warmup_s": round(stamps[warmup - 1] - start, 1),
        "peak_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20)
        if device.type == "cuda"
        else None,
        "final_loss": round(sum(result.losses[-5:]) / len(result.losses[-5:]), 4),
        "config": asdict(cfg),
    }


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table, with each variant's speed-up over plain."""
    plain = {r["model"]: r for r in rows if r["variant"] == "plain"}
    lines = [
        "| model | variant | batch | steps/s | images/s | vs plain (images/s) | "
        "warm-up s | peak MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = plain.get(r["model"])
        ratio = f"{r['images_per_s'] / base['images_per_s']:.2f}x" if base else "-"
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['batch_size']} | {r['steps_per_s']} "
            f"| {r['images_per_s']} | {ratio} | {r['warmup_s']} | "
            f"{r['peak_memory_mb'] if r['peak_memory_mb'] is not None else '-'} |"
        )
    return "\n".join(lines)


def time_notebooks(paths, mode: str = "gpu", timeout: float = 900.0) -> list[dict]:
    """Run each notebook top to bottom in a fresh kernel in run mode `mode` (see
    grading.run_notebook, not isolated: a timing, not a grade): one row per notebook
    with its seconds and failures."""
    from pathlib import Path

    from .grading import run_notebook

    rows = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"no notebook {path}; expected an .ipynb file")
        run = run_notebook(path, mode, timeout, isolate=False)
        rows.append(
            {
                "notebook": path.name,
                "mode": mode,
                "seconds": round(run["seconds"], 1),
                "timed_out": run["timed_out"],
                "failed": run["failed"],
                "errors": [
                    f"cell {i}: {name}: {message[:200]}"
                    for i, name, message in run.get("errors", [])
                ],
                "device": torch.cuda.get_device_name()
                if torch.cuda.is_available()
                else "cpu",
            }
        )
    return rows


def notebook_table(rows: list[dict]) -> str:
    lines = ["| notebook | mode | seconds | result |", "|---|---|---|---|"]
    for r in rows:
        if r["timed_out"]:
            result = "timed out"
        elif r["failed"]:
            result = "could not run: " + r["failed"]
        else:
            result = "; ".join(r["errors"]) or "ok"
        lines.append(f"| {r['notebook']} | {r['mode']} | {r['seconds']} | {result} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument(
        "--notebooks",
        nargs="+",
        default=None,
        help="time these chapters instead of the models",
    )
    parser.add_argument(
        "--mode",
        default="gpu",
        choices=("quick", "cpu", "gpu"),
        help="--notebooks: the run mode",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="--notebooks: seconds before a chapter is stopped",
    )
    args = parser.parse_args(argv)
    if args.notebooks:
        rows = time_notebooks(args.notebooks, args.mode, args.timeout)
        print(notebook_table(rows))
        if args.json:
            import json

            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        return
    rows = []
    for name in args.models:
        for variant in args.variants:
            rows.append(measure(name, variant, args.device, args.warmup, args.steps))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

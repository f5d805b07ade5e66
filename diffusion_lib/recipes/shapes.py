"""Part I's models (chapters 1-5): the evaluator that measures them and the
class-conditional shapes DDPM, with the ablation that chose its objective."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .. import compute, pretrained
from ..data import HELD_OUT, IMAGE_SIZE, LABEL_SIZES, make_shapes, sample_labels
from ..metrics import (
    Evaluator,
    EvaluatorConfig,
    Judge,
    classifier_accuracy,
    fid_kid,
    image_statistics,
    judged_accuracy,
    real_vs_real,
)
from ..pipelines import generate_shapes
from ..schedules import NoiseSchedule
from ..setup import hardware
from ..train import TrainConfig, save_checkpoint, train_diffusion, write_manifest
from ..train_parts import train_evaluator
from ..unet import UNet, UNetConfig, count_parameters
from .base import Recipe, seed_of, where
from .measure import shapes_quality

SHAPES_UNET = UNetConfig(
    base_channels=32,
    channel_mults=(1, 2, 2),
    attention_levels=(1, 2),
    label_sizes=LABEL_SIZES,
)
SHAPES_TRAIN = TrainConfig(
    steps=8000,
    batch_size=64,
    lr=1e-3,
    warmup=200,
    ema_decay=0.9995,
    p_uncond=0.1,
    prediction_type="eps",
    loss_weighting="none",
    seed=0,
)
SHAPES_IMAGES = 20000
# a smoke run: enough steps to pass through warm-up and write every file
SHAPES_QUICK = replace(SHAPES_TRAIN, steps=8, warmup=2)
SHAPES_QUICK_IMAGES = 256
SCHEDULE = {"kind": "cosine", "num_timesteps": 1000}
EVAL_SAMPLER = {"sampler": "ddim", "num_steps": 50, "guidance_scale": 3.0}
SNAPSHOT_DIR = Path("_build") / "snapshots"  # EMA weights during training (not shipped)


def train_evaluator_recipe(
    out_dir, *, quick=False, seed=0, device="cpu", accelerator=None
):
    """The classifier whose features FID / KID use and whose accuracy checks labels:
    trained on rendered shapes of every split."""
    n, steps = (512, 20) if quick else (20000, 2000)
    train = make_shapes(n, IMAGE_SIZE, seed=seed, split="all")
    test_seed = seed_of(seed, "evaluator test images")
    test = make_shapes(256 if quick else 2000, IMAGE_SIZE, seed=test_seed, split="all")
    torch.manual_seed(seed)
    model = Evaluator(EvaluatorConfig())
    start = time.perf_counter()
    losses = train_evaluator(
        model,
        train.images,
        train.labels,
        steps=steps,
        seed=seed,
        accelerator=accelerator,
    )
    seconds = time.perf_counter() - start
    acc = classifier_accuracy(
        model,
        test.images,
        test.labels,
        attributes=("shape", "colour", "size", "position"),
    )
    print(f"evaluator held-out accuracy: {acc}")
    info = {
        "recipe": "shapes-evaluator",
        "config": model.config.to_dict(),
        "seed": seed,
        "quick": quick,
        "train": {
            "steps": steps,
            "images": n,
            "batch_size": 128,
            "final_loss": losses[-1],
        },
        "training_seconds": round(seconds, 1),
        "hardware": hardware(where(device, accelerator)),
        "image_size": IMAGE_SIZE,
        "parameters": count_parameters(model),
        "metrics": {"test_accuracy": acc, "test_images": test.images.shape[0]},
    }
    return save_checkpoint(
        pretrained.checkpoint_path("shapes-evaluator", out_dir),
        model,
        info,
        accelerator=accelerator,
    )


def _snapshot_dir(quick: bool) -> Path:
    return SNAPSHOT_DIR / ("shapes-ddpm-quick" if quick else "shapes-ddpm")


def train_ddpm(out_dir, *, quick=False, seed=0, device="cpu", accelerator=None):
    """The shapes model. Training saves the EMA weights at each quarter of the run
    under SNAPSHOT_DIR, so that the measurement stage can re-measure the whole training
    curve with the current metrics without retraining."""
    cfg = replace(SHAPES_QUICK if quick else SHAPES_TRAIN, seed=seed)
    n_images = SHAPES_QUICK_IMAGES if quick else SHAPES_IMAGES
    data = make_shapes(n_images, IMAGE_SIZE, seed=seed, split="train")
    schedule = NoiseSchedule.make(SCHEDULE["kind"], SCHEDULE["num_timesteps"])
    torch.manual_seed(seed)
    model = UNet(SHAPES_UNET)
    snapshots = _snapshot_dir(quick)
    snapshots.mkdir(parents=True, exist_ok=True)

    def snapshot(step, ema_model):
        save_file(
            ema_model.state_dict(), str(snapshots / f"step-{step:06d}.safetensors")
        )

    result = train_diffusion(
        model,
        schedule,
        data.images,
        data.labels,
        cfg,
        callback=snapshot,
        callback_every=max(1, cfg.steps // 4),
        accelerator=accelerator,
    )
    ema = result.ema.model
    info = {
        "recipe": "shapes-ddpm",
        "config": SHAPES_UNET.to_dict(),
        "train": asdict(cfg),
        "seed": seed,
        "quick": quick,
        "schedule": SCHEDULE,
        "prediction_type": cfg.prediction_type,
        "image_size": IMAGE_SIZE,
        "held_out_combinations": HELD_OUT,
        "training_seconds": round(result.seconds, 1),
        "hardware": hardware(where(device, accelerator)),
        "parameters": count_parameters(ema),
        "final_loss": sum(result.losses[-100:]) / len(result.losses[-100:]),
        "metrics": None,
    }
    path = pretrained.checkpoint_path("shapes-ddpm", out_dir)
    return save_checkpoint(path, ema, info, accelerator=accelerator)


def measure_ddpm(out_dir=None, *, quick=False, seed=0, device="cpu", with_history=True):
    """Measure the saved shapes model (and, `with_history`, its training snapshots)
    with the current metrics, and write them into its manifest; the weights are not
    touched."""
    model, info = pretrained.load_pretrained("shapes-ddpm", directory=out_dir)
    evaluator, _ = pretrained.load_pretrained("shapes-evaluator")
    schedule = pretrained.schedule_from_manifest(info)
    n, n_history = (16, 8) if quick else (500, 200)
    pt = info["prediction_type"]
    snapshots = sorted(_snapshot_dir(quick).glob("step-*.safetensors"))
    history = []
    for path in snapshots if with_history else []:
        snapshot = UNet(UNetConfig.from_dict(info["config"]))
        snapshot.load_state_dict(load_file(str(path)))
        q = shapes_quality(
            snapshot.eval(),
            schedule,
            evaluator,
            n_history,
            seed,
            25,
            prediction_type=pt,
        )
        history.append({"step": int(path.stem.split("-")[1]), **q})
        print(f"step {history[-1]['step']}: {q}", flush=True)
    real = make_shapes(n, IMAGE_SIZE, seed_of(seed, "shapes real images")).images
    again = make_shapes(n, IMAGE_SIZE, seed_of(seed, "shapes real images, again"))
    metrics = {
        "judge": "open-set (diffusion_lib.judge)",
        "features": "appearance (diffusion_lib.metrics.AppearanceFeatures)",
        "train_prompts": shapes_quality(
            model, schedule, evaluator, n, seed, prediction_type=pt
        ),
        "held_out_prompts": shapes_quality(
            model, schedule, evaluator, n, seed, split="holdout", prediction_type=pt
        ),
        "train_prompts_ddpm_sampler": shapes_quality(
            model, schedule, evaluator, n, seed, sampler="ddpm", prediction_type=pt
        ),
        "real_images": image_statistics(Judge()(real), None),
        "real_vs_real": real_vs_real(evaluator, real, again.images, min(100, n)),
        "eval_samples": n,
        "eval_sampler": EVAL_SAMPLER,
        "history": history,
    }
    print(json.dumps(metrics, indent=1))
    path = pretrained.checkpoint_path("shapes-ddpm", out_dir)
    write_manifest(path, {**info, "metrics": metrics})
    return pretrained.manifest("shapes-ddpm", out_dir)


# short runs that decided the shapes recipe: objective x loss weighting
ABLATION = {
    "eps": {"prediction_type": "eps", "loss_weighting": "none"},
    "eps+min_snr": {"prediction_type": "eps", "loss_weighting": "min_snr"},
    "v": {"prediction_type": "v", "loss_weighting": "none"},
    "x0": {"prediction_type": "x0", "loss_weighting": "none"},
}


def ablation(quick=False, seed=0, steps=1500) -> dict:
    """Train each ABLATION variant for `steps` steps with the recipe's other settings;
    measure open-set prompt accuracy, background noise and FID (200 samples, DDIM-25,
    guidance 3). Prints a table; writes nothing to pretrained/."""
    steps, n = (4, 8) if quick else (steps, 200)
    data = make_shapes(2000 if quick else 20000, IMAGE_SIZE, seed=seed, split="train")
    schedule = NoiseSchedule.make(SCHEDULE["kind"], SCHEDULE["num_timesteps"])
    evaluator, _ = pretrained.load_pretrained("shapes-evaluator")
    rows = {}
    for name, overrides in ABLATION.items():
        torch.manual_seed(seed)
        cfg = replace(SHAPES_TRAIN, steps=steps, seed=seed, **overrides)
        with compute.aside():  # an ablation's models, not the checkpoint's
            result = train_diffusion(
                UNet(SHAPES_UNET),
                schedule,
                data.images,
                data.labels,
                cfg,
                progress=False,
            )
        labels = sample_labels(n, seed=seed_of(seed, "shapes prompts"))
        fake = generate_shapes(
            result.ema.model,
            schedule,
            labels,
            num_steps=25,
            seed=seed,
            prediction_type=cfg.prediction_type,
        )
        real_seed = seed_of(seed, "shapes real images")
        real = make_shapes(n, IMAGE_SIZE, seed=real_seed).images
        verdict = Judge()(fake)
        rows[name] = {
            **judged_accuracy(verdict, labels),
            **image_statistics(verdict, labels),
            **fid_kid(evaluator, fake, real, min(100, n)),
            "seconds": round(result.seconds, 1),
        }
        print(
            f"{name:12s} joint acc {rows[name]['joint']:.3f}  "
            f"background {rows[name]['background_rms_mean']:.4f}  "
            f"FID {rows[name]['fid']:8.2f}  ({rows[name]['seconds']} s, {steps} steps)",
            flush=True,
        )
    return rows


EVALUATOR = Recipe(
    name="shapes-evaluator",
    builds="the shapes classifier behind FID / KID",
    chapter=3,
    train=train_evaluator_recipe,
)
DDPM = Recipe(
    name="shapes-ddpm",
    builds="the class-conditional shapes DDPM",
    chapter=3,
    train=train_ddpm,
    measure=measure_ddpm,
    needs=("shapes-evaluator",),
)

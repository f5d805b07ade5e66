"""Training recipes for the shipped checkpoints: one command per model, seeded.

    python -m diffusion_lib.recipes shapes-evaluator
    python -m diffusion_lib.recipes shapes-ddpm
    python -m diffusion_lib.recipes shapes-ddpm --stage measure  # re-measure only
    python -m diffusion_lib.recipes shapes-ddpm --quick --out /tmp/ckpt  # a smoke run
    python -m diffusion_lib.recipes ablation --steps 1500  # the comparison behind it
    python -m diffusion_lib.recipes scenes-vae  # chapter 6's autoencoder
    python -m diffusion_lib.recipes scenes-clip  # chapter 7's CLIP
    python -m diffusion_lib.recipes scenes-ldm  # chapter 8's mini Stable Diffusion

Each recipe trains, measures its quality gates, and writes NAME.safetensors + NAME.json.
Every recipe also runs data-parallel, in mixed precision or with gradient
accumulation under 🤗 Accelerate (see diffusion_lib.scale):

    accelerate launch --multi_gpu --num_processes 4 -m diffusion_lib.recipes scenes-ldm
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from . import pretrained
from . import scale as scaling
from .clip import (
    CLIP,
    CLIPConfig,
    CLIPTrainConfig,
    WordTokenizer,
    binding_test,
    retrieval,
    scene_tokenizer,
    tokenizer_from_manifest,
    train_clip,
    zero_shot_one_object,
)
from .data import (
    HELD_OUT,
    IMAGE_SIZE,
    LABEL_SIZES,
    SCENE_SIZE,
    ScenesData,
    captions_sha256,
    make_scenes,
    make_shapes,
    render_scenes,
    sample_labels,
    scene_captions,
    scene_prompts,
)
from .metrics import (
    BINDING_OUTCOMES,
    BINDINGS,
    Evaluator,
    EvaluatorConfig,
    Judge,
    SceneJudge,
    attribute_binding,
    binding_outcomes,
    by_pair,
    classifier_accuracy,
    diversity,
    fid_kid,
    fid_kid_with,
    image_statistics,
    judged_accuracy,
    keeps_objects,
    real_vs_real,
    scene_accuracy,
    scene_features,
    train_evaluator,
)
from .pipelines import (
    MiniDALLE2,
    MiniStableDiffusion,
    encode_scenes,
    generate_shapes,
)
from .prior import DiffusionPrior, PriorConfig
from .scale import hardware
from .schedules import NoiseSchedule
from .train import (
    TrainConfig,
    loss_summary,
    save_checkpoint,
    train_diffusion,
    write_manifest,
)
from .unclip import (
    DecoderConfig,
    UnCLIPDecoder,
    UnCLIPUpsampler,
    UpsamplerTrainConfig,
    downsample,
    enlarge,
    train_upsampler,
)
from .unet import UNet, UNetConfig, count_parameters
from .vae import (
    AutoencoderKL,
    VAEConfig,
    VAETrainConfig,
    latent_scaling_factor,
    psnr,
    reconstruct,
    train_vae,
)

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
STAGES = ("all", "train", "measure")
SCHEDULE = {"kind": "cosine", "num_timesteps": 1000}
EVAL_SAMPLER = {"sampler": "ddim", "num_steps": 50, "guidance_scale": 3.0}


def evaluator_recipe(out_dir, quick=False, seed=0) -> dict:
    n, steps = (512, 20) if quick else (20000, 2000)
    train = make_shapes(n, IMAGE_SIZE, seed=seed, split="all")
    test = make_shapes(
        2000 if not quick else 256, IMAGE_SIZE, seed=seed + 1000, split="all"
    )
    torch.manual_seed(seed)
    model = Evaluator(EvaluatorConfig())
    start = time.perf_counter()
    losses = train_evaluator(model, train.images, train.labels, steps=steps, seed=seed)
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
        "hardware": hardware(),
        "image_size": IMAGE_SIZE,
        "parameters": count_parameters(model),
        "metrics": {"test_accuracy": acc, "test_images": test.images.shape[0]},
    }
    return save_checkpoint(
        pretrained.checkpoint_path("shapes-evaluator", out_dir), model, info
    )


def _quality(
    model,
    schedule,
    evaluator,
    n,
    seed,
    num_steps=50,
    guidance_scale=3.0,
    split="train",
    prediction_type="eps",
    sampler="ddim",
):
    """Open-set prompt accuracy, image statistics and FID / KID of n samples."""
    labels = sample_labels(n, seed=seed + 7, split=split)
    fake = generate_shapes(
        model,
        schedule,
        labels,
        sampler=sampler,
        num_steps=num_steps,
        guidance_scale=guidance_scale,
        seed=seed,
        prediction_type=prediction_type,
    )
    real = make_shapes(n, IMAGE_SIZE, seed=seed + 500, split=split).images
    verdict = Judge()(fake)
    pairs = {"by_pair": by_pair(verdict, labels)} if split == "holdout" else {}
    return {
        **judged_accuracy(verdict, labels),
        **image_statistics(verdict, labels),
        **fid_kid(evaluator, fake, real, kid_subset=min(100, n)),
        **pairs,
    }


def measure_ddpm(out_dir=None, quick=False, seed=0, with_history=True) -> dict:
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
        q = _quality(
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
    real_verdict = Judge()(make_shapes(n, IMAGE_SIZE, seed + 500).images)
    metrics = {
        "judge": "open-set (diffusion_lib.judge)",
        "features": "appearance (diffusion_lib.metrics.AppearanceFeatures)",
        "train_prompts": _quality(
            model, schedule, evaluator, n, seed, prediction_type=pt
        ),
        "held_out_prompts": _quality(
            model, schedule, evaluator, n, seed, split="holdout", prediction_type=pt
        ),
        "train_prompts_ddpm_sampler": _quality(
            model, schedule, evaluator, n, seed, sampler="ddpm", prediction_type=pt
        ),
        "real_images": image_statistics(real_verdict, None),
        "real_vs_real": real_vs_real(
            evaluator,
            make_shapes(n, IMAGE_SIZE, seed + 500).images,
            make_shapes(n, IMAGE_SIZE, seed + 900).images,
            min(100, n),
        ),
        "eval_samples": n,
        "eval_sampler": EVAL_SAMPLER,
        "history": history,
    }
    print(json.dumps(metrics, indent=1))
    path = pretrained.checkpoint_path("shapes-ddpm", out_dir)
    write_manifest(path, {**info, "metrics": metrics})
    return pretrained.manifest("shapes-ddpm", out_dir)


SNAPSHOT_DIR = Path("_build") / "snapshots"  # EMA weights during training (not shipped)


def ddpm_recipe(out_dir, quick=False, seed=0, stage="all") -> dict:
    """Train the shapes model (stage "train"), then measure it (stage "measure").

    Training saves the EMA weights at each quarter of the run under SNAPSHOT_DIR, so
    that the measurement stage can re-measure the whole training curve with the
    current metrics without retraining. Both stages write the manifest."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    if stage in ("all", "train"):
        _train_ddpm(out_dir, quick, seed)
    if stage in ("all", "measure"):
        return measure_ddpm(out_dir, quick=quick, seed=seed)
    return pretrained.manifest("shapes-ddpm", out_dir)


def _snapshot_dir(quick: bool) -> Path:
    return SNAPSHOT_DIR / ("shapes-ddpm-quick" if quick else "shapes-ddpm")


def _train_ddpm(out_dir, quick=False, seed=0) -> dict:
    cfg = TrainConfig(**{**asdict(SHAPES_TRAIN), "seed": seed})
    n_images = 20000
    if quick:
        cfg.steps, cfg.warmup, n_images = 8, 2, 256
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
        "hardware": hardware(),
        "parameters": count_parameters(ema),
        "final_loss": sum(result.losses[-100:]) / len(result.losses[-100:]),
        "metrics": None,
    }
    path = pretrained.checkpoint_path("shapes-ddpm", out_dir)
    return save_checkpoint(path, ema, info)


ABLATION = {  # short runs that decided the shapes recipe: objective x loss weighting
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
        cfg = TrainConfig(
            **{**asdict(SHAPES_TRAIN), "steps": steps, "seed": seed, **overrides}
        )
        result = train_diffusion(
            UNet(SHAPES_UNET), schedule, data.images, data.labels, cfg, progress=False
        )
        labels = sample_labels(n, seed=seed + 7)
        fake = generate_shapes(
            result.ema.model,
            schedule,
            labels,
            num_steps=25,
            seed=seed,
            prediction_type=cfg.prediction_type,
        )
        real = make_shapes(n, IMAGE_SIZE, seed=seed + 500).images
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


# ---------------------------------------------------------------------------------
# Part II: the scene VAE (chapter 6)

# The mini Stable Diffusion's denoiser (chapter 8): a cross-attention UNet on 8x8x4
# latents, attending to the CLIP text encoder's token states (width 64).
SCENES_LDM_UNET = UNetConfig(
    in_channels=4,
    out_channels=4,
    base_channels=64,
    channel_mults=(1, 2),
    num_res_blocks=1,
    attention_levels=(0, 1),
    context_dim=64,
)
# For chapter 6's cost comparison: the same UNet working on 64x64x3 pixels, with the
# three extra levels (64 -> 32 -> 16 -> 8) that the VAE's encoder and decoder replace.
PIXEL_COMPARISON_UNET = UNetConfig(
    **{
        **SCENES_LDM_UNET.to_dict(),
        "in_channels": 3,
        "out_channels": 3,
        "channel_mults": (1, 1, 1, 1, 2),
        "attention_levels": (3, 4),
    }
)
SCENES_VAE = VAEConfig(channels=(16, 32, 64, 64), blocks_per_level=1)
SCENES_VAE_TRAIN = VAETrainConfig(
    steps=6000, batch_size=32, lr=2e-3, warmup=100, kl_weight=1e-6, seed=0
)
VAE_TRADEOFF = (1e-6, 1e-4, 1e-2, 1.0)  # kl_weight values of the trade-off sweep


def measure_vae(model, n: int, seed: int) -> dict:
    """Reconstruction PSNR and the scene judge on originals vs reconstructions, on n
    real scenes of each split (seeds no training run uses)."""
    judge, out = SceneJudge(), {}
    for split in ("train", "holdout"):
        real = make_scenes(n, SCENE_SIZE, seed=seed + 7000, split=split)
        rec = reconstruct(model, real.images)
        p = psnr(rec, real.images)
        labels = (real.objects, real.relation, real.position)
        out[split] = {
            "psnr_mean": p.mean().item(),
            "psnr_p05": p.quantile(0.05).item(),
            "judge_originals": scene_accuracy(judge(real.images), *labels),
            "judge_reconstructions": scene_accuracy(judge(rec), *labels),
        }
    return out


def vae_tradeoff(quick=False, seed=0, steps=400) -> dict:
    """The reconstruction / KL trade-off: the same short training for each kl_weight
    in VAE_TRADEOFF, measured by PSNR on fresh train-split scenes (new drawings of the
    training compositions, not held-out ones) and KL per latent element."""
    steps, n = (3, 16) if quick else (steps, 300)
    data = make_scenes(256 if quick else 10000, SCENE_SIZE, seed=seed, split="train")
    test = make_scenes(n, SCENE_SIZE, seed=seed + 7000, split="train").images
    rows = {}
    for beta in VAE_TRADEOFF:
        torch.manual_seed(seed)
        model = AutoencoderKL(SCENES_VAE)
        overrides = {"steps": steps, "kl_weight": beta, "warmup": min(100, steps)}
        cfg = VAETrainConfig(**{**asdict(SCENES_VAE_TRAIN), **overrides})
        result = train_vae(model, data.images, cfg, progress=False)
        with torch.no_grad():
            posterior = result.ema.model.encode(test)
        kl = (posterior.kl().mean() / posterior.mean[0].numel()).item()
        rows[f"{beta:g}"] = {
            "kl_weight": beta,
            "psnr": psnr(reconstruct(result.ema.model, test), test).mean().item(),
            "kl_per_latent_element": kl,
            "latent_std": 1 / latent_scaling_factor(result.ema.model, test),
            "steps": steps,
        }
        print(f"kl_weight {beta:g}: {rows[f'{beta:g}']}", flush=True)
    return rows


def vae_recipe(out_dir, quick=False, seed=0) -> dict:
    """Train the scene autoencoder, measure it, and measure the KL trade-off."""
    cfg = VAETrainConfig(**{**asdict(SCENES_VAE_TRAIN), "seed": seed})
    n_images = 10000
    if quick:
        cfg.steps, cfg.warmup, n_images = 4, 2, 256
    data = make_scenes(n_images, SCENE_SIZE, seed=seed, split="train")
    probe = make_scenes(64 if quick else 200, SCENE_SIZE, seed=seed + 7500).images
    curve = []

    def measure(step, ema_model):
        curve.append(
            {
                "step": step,
                "psnr": psnr(reconstruct(ema_model, probe), probe).mean().item(),
            }
        )
        print(f"step {step}: PSNR, fresh scenes {curve[-1]['psnr']:.2f} dB", flush=True)

    torch.manual_seed(seed)
    model = AutoencoderKL(SCENES_VAE)
    result = train_vae(
        model,
        data.images,
        cfg,
        callback=measure,
        callback_every=max(1, cfg.steps // 12),
    )
    vae = result.ema.model
    vae.config.scaling_factor = latent_scaling_factor(vae, data.images[:2000], seed)
    n = 64 if quick else 1000
    info = {
        "recipe": "scenes-vae",
        "config": vae.config.to_dict(),
        "train": asdict(cfg),
        "seed": seed,
        "quick": quick,
        "image_size": SCENE_SIZE,
        "training_images": n_images,
        "training_seconds": round(result.seconds, 1),
        "hardware": hardware(),
        "parameters": count_parameters(vae),
        "final_loss": sum(result.losses[-100:]) / len(result.losses[-100:]),
        "metrics": {
            "eval_images_per_split": n,
            "reconstruction": measure_vae(vae, n, seed),
            "psnr_curve": curve,
            "tradeoff": vae_tradeoff(quick, seed),
        },
    }
    print(json.dumps(info["metrics"], indent=1))
    path = pretrained.checkpoint_path("scenes-vae", out_dir)
    return save_checkpoint(path, vae, info)


# ---------------------------------------------------------------------------------
# Part II: CLIP on scenes (chapter 7)

SCENES_CLIP_TRAIN = CLIPTrainConfig(
    steps=3000, batch_size=256, lr=1e-3, warmup=100, weight_decay=0.1, seed=0
)


def scenes_clip_config(tokenizer: WordTokenizer) -> CLIPConfig:
    return CLIPConfig(
        vocab_size=tokenizer.vocab_size, context_length=tokenizer.context_length
    )


def measure_clip(model, tokenizer, n: int, seed: int) -> dict:
    """Zero-shot classification (one-object scenes), retrieval recall@1 (a pool of n
    scenes) and the binding test (two-object scenes), per split."""
    out = {}
    for split in ("train", "holdout"):
        scenes = lambda offset, two, split=split: make_scenes(
            n, SCENE_SIZE, seed + offset, split, two_object_fraction=two
        )
        out[split] = {
            "zero_shot": zero_shot_one_object(model, tokenizer, scenes(8000, 0.0)),
            "retrieval": retrieval(model, tokenizer, scenes(8100, 0.5)),
            "binding": binding_test(model, tokenizer, scenes(8200, 1.0)),
        }
    return out


def clip_recipe(out_dir, quick=False, seed=0) -> dict:
    """Train CLIP contrastively on training-split scenes and their captions."""
    cfg = CLIPTrainConfig(**{**asdict(SCENES_CLIP_TRAIN), "seed": seed})
    n_images = 20000
    if quick:
        cfg.steps, cfg.warmup, cfg.batch_size, n_images = 4, 2, 32, 256
    tokenizer = scene_tokenizer()
    data = make_scenes(n_images, SCENE_SIZE, seed=seed, split="train")
    torch.manual_seed(seed)
    model = CLIP(scenes_clip_config(tokenizer))
    result = train_clip(model, data.images, tokenizer(data.captions), cfg)
    every = max(1, cfg.steps // 30)
    n = 64 if quick else 1000
    info = {
        "recipe": "scenes-clip",
        "config": model.config.to_dict(),
        "tokenizer": tokenizer.to_dict(),
        "train": asdict(cfg),
        "seed": seed,
        "quick": quick,
        "image_size": SCENE_SIZE,
        "training_images": n_images,
        "training_seconds": round(result.seconds, 1),
        "hardware": hardware(),
        "parameters": count_parameters(model),
        "final_temperature": result.temperatures[-1],
        "curve": [
            {
                "step": i + every,
                "loss": sum(result.losses[i : i + every]) / every,
                "temperature": result.temperatures[i + every - 1],
            }
            for i in range(0, cfg.steps - every + 1, every)
        ],
        "metrics": {"eval_images": n, **measure_clip(model, tokenizer, n, seed)},
    }
    print(json.dumps(info["metrics"], indent=1))
    path = pretrained.checkpoint_path("scenes-clip", out_dir)
    return save_checkpoint(path, model, info)


# ---------------------------------------------------------------------------------
# Part II: the mini Stable Diffusion (chapter 8)

SCENES_LDM_TRAIN = TrainConfig(
    steps=10000,
    batch_size=128,
    lr=1e-3,
    warmup=200,
    ema_decay=0.9995,
    p_uncond=0.1,
    prediction_type="eps",
    loss_weighting="none",
    seed=0,
)
# Stable Diffusion's "scaled linear" betas (0.00085 -> 0.012): alpha_bar_T = 0.0047.
# Not Part I's cosine schedule: its alpha_bar_T = 2.4e-9, and a DDIM step from T with
# eps-prediction divides by sqrt(alpha_bar_T), which pixels survive only because x0 is
# clipped to [-1, 1]; latents are not clipped, and the samples diverge (chapter 8).
LDM_SCHEDULE = {"kind": "scaled_linear", "num_timesteps": 1000}
# Three in four training scenes have two objects: one object is learned long before
# the relation between two is (chapter 8), so the hard case gets most of the samples.
LDM_TWO_OBJECT_FRACTION = 0.75
LDM_GUIDANCE = 3.0  # the default guidance scale of the shipped pipeline
LDM_SWEEP = (1.0, 2.0, 3.0, 5.0, 8.0)  # guidance scales of the sweep
SCENE_MEASURE_PROMPTS = 200  # prompts per group, for the mini SD and the mini DALL-E 2
LDM_GROUPS = {  # name -> (split, two_object_fraction) of the measured prompts
    "one object, seen": ("train", 0.0),
    "two objects, seen": ("train", 1.0),
    "one object, held out": ("holdout", 0.0),
    "two objects, held out": ("holdout", 1.0),
}


def _train_ldm(out_dir, quick=False, seed=0, device="cpu") -> dict:
    cfg = TrainConfig(**{**asdict(SCENES_LDM_TRAIN), "seed": seed})
    n_images = 20000
    if quick:
        cfg.steps, cfg.warmup, cfg.batch_size, n_images = 4, 2, 16, 128
    device = torch.device(device)
    vae, vae_info = pretrained.load_pretrained("scenes-vae", device, out_dir)
    text_encoder, clip_info = pretrained.load_pretrained("scenes-clip", device, out_dir)
    tokenizer = tokenizer_from_manifest(clip_info)
    scenes = make_scenes(
        n_images,
        SCENE_SIZE,
        seed=seed,
        split="train",
        two_object_fraction=LDM_TWO_OBJECT_FRACTION,
    )
    start = time.perf_counter()
    scenes.images = scenes.images.to(device)
    latents, context = encode_scenes(vae, text_encoder, tokenizer, scenes)
    encode_seconds = time.perf_counter() - start
    null = text_encoder.text_states(tokenizer([""]).to(device))[0].detach()
    schedule = NoiseSchedule.make(LDM_SCHEDULE["kind"], LDM_SCHEDULE["num_timesteps"])
    torch.manual_seed(seed)
    model = UNet(SCENES_LDM_UNET).to(device)
    result = train_diffusion(
        model, schedule, latents, None, cfg, context=context, null_context=null
    )
    ema = result.ema.model
    info = {
        "recipe": "scenes-ldm",
        "config": SCENES_LDM_UNET.to_dict(),
        "train": asdict(cfg),
        "seed": seed,
        "quick": quick,
        "schedule": LDM_SCHEDULE,
        "prediction_type": cfg.prediction_type,
        "guidance_scale": LDM_GUIDANCE,
        "image_size": SCENE_SIZE,
        "latent_shape": list(latents.shape[1:]),
        "vae_sha256": vae_info["sha256"],
        "clip_sha256": clip_info["sha256"],
        "training_images": n_images,
        "two_object_fraction": LDM_TWO_OBJECT_FRACTION,
        "encode_seconds": round(encode_seconds, 1),
        "training_seconds": round(result.seconds, 1),
        "hardware": hardware(device),
        "parameters": count_parameters(ema),
        **loss_summary(result.losses),
        "metrics": None,
    }
    return save_checkpoint(pretrained.checkpoint_path("scenes-ldm", out_dir), ema, info)


def measure_scene_pipeline(
    pipe,
    n: int,
    seed: int,
    num_steps: int,
    groups=LDM_GROUPS,
    guidance_scale=None,
    verbose=True,
) -> dict:
    """Prompt accuracy (scene judge), FID / KID against real scenes of the same
    prompts (beside real vs real) for each group of prompts."""
    judge, out, feats = SceneJudge(), {}, scene_features(pipe.text_encoder)
    for k, (name, (split, two)) in enumerate(groups.items()):
        captions, labels = scene_prompts(n, seed + 9000 + k, split, two)
        fake = pipe(
            captions, num_steps=num_steps, seed=seed + k, guidance_scale=guidance_scale
        )
        real = render_scenes(*labels, SCENE_SIZE, seed=seed + 9100 + k)[0]
        other = render_scenes(*labels, SCENE_SIZE, seed=seed + 9200 + k)[0]
        out[name] = {
            **scene_accuracy(judge(fake), *labels),
            **fid_kid_with(feats, fake, real, min(100, n)),
            "real_vs_real": fid_kid_with(feats, other, real, min(100, n)),
            "prompts": n,
            "prompt_seed": seed + 9000 + k,
            "sample_seed": seed + k,
            "captions_sha256": captions_sha256(captions),
        }
        if verbose:
            print(f"{name}: {out[name]}", flush=True)
    return out


def guidance_sweep(
    pipe,
    n: int,
    seed: int,
    num_steps: int,
    per_prompt: int = 4,
    scales=LDM_SWEEP,
    verbose=True,
) -> dict:
    """Prompt accuracy, diversity and FID at each guidance scale, on n seen prompts
    (half one-object, half two-object), each drawn `per_prompt` times."""
    captions, labels = scene_prompts(n // per_prompt, seed + 9300, "train", 0.5)
    captions = [c for c in captions for _ in range(per_prompt)]
    labels = [x.repeat_interleave(per_prompt, 0) for x in labels]
    real = render_scenes(*labels, SCENE_SIZE, seed=seed + 9400)[0]
    judge, rows, feats = SceneJudge(), {}, scene_features(pipe.text_encoder)
    for scale in scales:
        fake = pipe(captions, num_steps=num_steps, seed=seed, guidance_scale=scale)
        rows[f"{scale:g}"] = {
            "guidance_scale": scale,
            "captions_sha256": captions_sha256(captions),
            **scene_accuracy(judge(fake), *labels),
            "diversity": diversity(fake, per_prompt),
            **fid_kid_with(feats, fake, real, min(100, len(captions))),
        }
        if verbose:
            print(f"guidance {scale:g}: {rows[f'{scale:g}']}", flush=True)
    rows["real"] = {"diversity": diversity(real, per_prompt)}
    return rows


def measure_ldm(out_dir=None, quick=False, seed=0, device="cpu") -> dict:
    """Measure the saved mini SD and write the figures into its manifest."""
    pipe = MiniStableDiffusion.from_pretrained(device, out_dir)
    n, n_sweep, steps = (8, 8, 2) if quick else (SCENE_MEASURE_PROMPTS, 200, 50)
    metrics = {
        "judge": "open-set scene judge (diffusion_lib.judge.SceneJudge)",
        "features": "scene appearance features (diffusion_lib.metrics.scene_features)",
        "sampler": {
            "sampler": "ddim",
            "num_steps": steps,
            "guidance_scale": pipe.guidance_scale,
        },
        "groups": measure_scene_pipeline(pipe, n, seed, steps),
        "guidance_sweep": guidance_sweep(pipe, n_sweep, seed, 2 if quick else 25),
        "guidance_sweep_steps": 2 if quick else 25,
    }
    print(json.dumps(metrics, indent=1))
    info = pretrained.manifest("scenes-ldm", out_dir)
    write_manifest(
        pretrained.checkpoint_path("scenes-ldm", out_dir), {**info, "metrics": metrics}
    )
    return pretrained.manifest("scenes-ldm", out_dir)


def ldm_recipe(out_dir, quick=False, seed=0, stage="all", device="cpu") -> dict:
    """Train the latent UNet on the shipped VAE's latents and CLIP's text states
    (stage "train"), then measure the whole pipeline (stage "measure")."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    if stage in ("all", "train"):
        _train_ldm(out_dir, quick, seed, device)
    if stage in ("all", "measure"):
        return measure_ldm(out_dir, quick, seed, device)
    return pretrained.manifest("scenes-ldm", out_dir)


# ---------------------------------------------------------------------------------
# Part III: the mini DALL-E 2 / unCLIP (chapter 9): prior, decoder, upsampler

UNCLIP_BASE_SIZE = 32  # the decoder's resolution; the upsampler doubles it to 64
# The decoder: a pixel UNet at 32x32 that sees the CLIP image embedding twice (added to
# the time embedding, and as four context tokens for the attention at 8x8).
SCENES_DECODER = DecoderConfig(
    unet=UNetConfig(
        base_channels=32,
        channel_mults=(1, 2, 2),
        attention_levels=(2,),
        context_dim=64,
    ),
    embed_dim=64,
    num_tokens=4,
)
SCENES_DECODER_TRAIN = TrainConfig(
    steps=3500,
    batch_size=64,
    lr=1e-3,
    warmup=200,
    ema_decay=0.999,
    p_uncond=0.1,  # the image embedding is zeroed 10% of the time (guidance)
    prediction_type="eps",
    loss_weighting="none",
    seed=0,
)
UNCLIP_SCHEDULE = {"kind": "cosine", "num_timesteps": 1000}
UNCLIP_TRAINING_IMAGES = 20000  # the mini SD's data: same size, same two-object share


@torch.no_grad()
def clip_embeddings(clip_model, tokenizer, scenes, batch_size=500) -> dict:
    """What the unCLIP models train on, computed once (CLIP is frozen): unit image
    embeddings [N, D], unit text embeddings [N, D], token states [N, L, W] and the
    caption mask [N, L] (True at real tokens)."""
    out = {"image_embed": [], "text_embed": [], "text_states": [], "text_mask": []}
    device = next(clip_model.parameters()).device
    for i in range(0, len(scenes), batch_size):
        part = slice(i, i + batch_size)
        tokens = tokenizer(scenes.captions[part]).to(device)
        states, embed = clip_model.text(tokens)
        out["image_embed"].append(
            clip_model.encode_image(scenes.images[part].to(device))
        )
        out["text_embed"].append(F.normalize(embed, dim=-1))
        out["text_states"].append(states)
        out["text_mask"].append(tokens != tokenizer.pad_id)
    return {k: torch.cat(v).cpu() for k, v in out.items()}


def unclip_training_scenes(quick: bool, seed: int):
    n = 128 if quick else UNCLIP_TRAINING_IMAGES
    return make_scenes(
        n,
        SCENE_SIZE,
        seed=seed,
        split="train",
        two_object_fraction=LDM_TWO_OBJECT_FRACTION,
    )


def _unclip_info(name, cfg, model, result, seed, quick, device, extra) -> dict:
    return {
        "recipe": name,
        "train": asdict(cfg),
        "seed": seed,
        "quick": quick,
        "schedule": UNCLIP_SCHEDULE,
        "prediction_type": cfg.prediction_type,
        "training_seconds": round(result.seconds, 1),
        "hardware": hardware(device),
        "parameters": count_parameters(model),
        **loss_summary(result.losses),
        "metrics": None,
        **extra,
    }


def decoder_recipe(out_dir, quick=False, seed=0, stage="all", device="cpu") -> dict:
    """Train the unCLIP decoder (stage "train"); measure the whole mini DALL-E 2 with
    the prior and upsampler from the same folder (stage "measure")."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    if stage in ("all", "train"):
        _train_decoder(out_dir, quick, seed, device)
    if stage in ("all", "measure"):
        return measure_dalle2(out_dir, quick, seed)
    return pretrained.manifest("scenes-decoder", out_dir)


def _train_decoder(out_dir, quick=False, seed=0, device="cpu") -> dict:
    """32x32 scenes from their CLIP image embeddings."""
    cfg = TrainConfig(**{**asdict(SCENES_DECODER_TRAIN), "seed": seed})
    if quick:
        cfg.steps, cfg.warmup, cfg.batch_size = 4, 2, 16
    device = torch.device(device)
    clip_model, clip_info = pretrained.load_pretrained("scenes-clip", device, out_dir)
    scenes = unclip_training_scenes(quick, seed)
    start = time.perf_counter()
    embeds = clip_embeddings(clip_model, tokenizer_from_manifest(clip_info), scenes)
    encode_seconds = time.perf_counter() - start
    images = downsample(scenes.images, SCENE_SIZE // UNCLIP_BASE_SIZE)
    schedule = NoiseSchedule.make(
        UNCLIP_SCHEDULE["kind"], UNCLIP_SCHEDULE["num_timesteps"]
    )
    torch.manual_seed(seed)
    model = UnCLIPDecoder(SCENES_DECODER).to(device)
    null = torch.zeros(SCENES_DECODER.embed_dim)
    result = train_diffusion(
        model,
        schedule,
        images,
        config=cfg,
        conditions={"image_embed": (embeds["image_embed"], null)},
    )
    info = _unclip_info(
        "scenes-decoder",
        cfg,
        result.ema.model,
        result,
        seed,
        quick,
        device,
        {
            "config": SCENES_DECODER.to_dict(),
            "image_size": UNCLIP_BASE_SIZE,
            "clip_sha256": clip_info["sha256"],
            "training_images": len(scenes),
            "two_object_fraction": LDM_TWO_OBJECT_FRACTION,
            "encode_seconds": round(encode_seconds, 1),
            "guidance_scale": DECODER_GUIDANCE,
        },
    )
    path = pretrained.checkpoint_path("scenes-decoder", out_dir)
    return save_checkpoint(path, result.ema.model, info)


SCENES_PRIOR = PriorConfig(
    embed_dim=64, text_width=64, context_length=20, width=128, layers=4, heads=4
)
SCENES_PRIOR_TRAIN = TrainConfig(
    steps=3000,
    batch_size=128,
    lr=5e-4,
    warmup=200,
    weight_decay=0.0,
    ema_decay=0.999,
    p_uncond=0.1,  # the caption is dropped 10% of the time (guidance)
    prediction_type="x0",  # the paper's prior predicts the clean embedding
    loss_weighting="none",
    seed=0,
)
PRIOR_GUIDANCE = 2.0
PRIOR_SWEEP = (1.0, 2.0, 4.0)


def prior_recipe(out_dir, quick=False, seed=0, stage="all") -> dict:
    """Train the unCLIP prior: caption -> CLIP image embedding (stage "train"), then
    measure it (stage "measure")."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    if stage in ("all", "train"):
        _train_prior(out_dir, quick, seed)
    if stage in ("all", "measure"):
        return measure_prior(out_dir, quick, seed)
    return pretrained.manifest("scenes-prior", out_dir)


def _train_prior(out_dir, quick=False, seed=0) -> dict:
    cfg = TrainConfig(**{**asdict(SCENES_PRIOR_TRAIN), "seed": seed})
    if quick:
        cfg.steps, cfg.warmup, cfg.batch_size = 4, 2, 16
    clip_model, clip_info = pretrained.load_pretrained("scenes-clip", None, out_dir)
    tokenizer = tokenizer_from_manifest(clip_info)
    scenes = unclip_training_scenes(quick, seed)
    e = clip_embeddings(clip_model, tokenizer, scenes)
    null = empty_caption_embeddings(clip_model, tokenizer)
    torch.manual_seed(seed)
    model = DiffusionPrior(SCENES_PRIOR)
    model.fit_standardisation(e["image_embed"])
    schedule = NoiseSchedule.make(
        UNCLIP_SCHEDULE["kind"], UNCLIP_SCHEDULE["num_timesteps"]
    )
    names = ("text_states", "text_embed", "text_mask")
    result = train_diffusion(
        model,
        schedule,
        model.standardise(e["image_embed"]),
        config=cfg,
        conditions={k: (e[k], null[k]) for k in names},
    )
    info = _unclip_info(
        "scenes-prior",
        cfg,
        result.ema.model,
        result,
        seed,
        quick,
        "cpu",
        {
            "config": SCENES_PRIOR.to_dict(),
            "guidance_scale": PRIOR_GUIDANCE,
            "candidates": 2,
            "sampling_steps": 25,
            "clip_sha256": clip_info["sha256"],
            "training_images": len(scenes),
            "two_object_fraction": LDM_TWO_OBJECT_FRACTION,
        },
    )
    path = pretrained.checkpoint_path("scenes-prior", out_dir)
    return save_checkpoint(path, result.ema.model, info)


def empty_caption_embeddings(clip_model, tokenizer) -> dict:
    """The empty caption's text_states [L, W], text_embed [D] and text_mask [L]: what
    caption dropout puts in place of a caption (the prior's "null" condition)."""
    blank = make_scenes(1, SCENE_SIZE, seed=0)
    blank.captions = [""]
    e = clip_embeddings(clip_model, tokenizer, blank)
    return {k: e[k][0] for k in ("text_states", "text_embed", "text_mask")}


PRIOR_GROUPS = {  # name -> (split, two_object_fraction) of captions never trained on
    "unseen captions, seen compositions": ("train", LDM_TWO_OBJECT_FRACTION),
    "held-out compositions": ("holdout", LDM_TWO_OBJECT_FRACTION),
}
# the gate against a collapsed prior (prior_spread: 0 when every draw of a caption is
# the same embedding, about 1 when draws differ as much as two real drawings do): a
# prior below a tenth of the real variety has collapsed onto one embedding per caption
PRIOR_SPREAD_GATE = 0.1


def unclip_training_captions(seed: int = 0) -> set:
    """Every caption the shipped prior and decoder were trained on (their recipes'
    scenes, without rendering them)."""
    return set(
        scene_captions(UNCLIP_TRAINING_IMAGES, seed, "train", LDM_TWO_OBJECT_FRACTION)
    )


def unseen_scenes(
    n: int,
    seed: int,
    split: str,
    two_object_fraction: float,
    seen: set,
    max_draws: int = 20,
) -> ScenesData:
    """n scenes whose captions are not in `seen`: drawn in batches of 2n from seeds
    seed, seed + 1, ... (make_scenes), keeping the unseen ones in order. With a small
    grammar, most one-object captions are training captions, so the kept scenes have
    more two objects than two_object_fraction asks (their share is in the scenes)."""
    kept = []
    for k in range(max_draws):
        pool = make_scenes(
            2 * n,
            SCENE_SIZE,
            seed=seed + k,
            split=split,
            two_object_fraction=two_object_fraction,
        )
        kept.append(pool.select([c not in seen for c in pool.captions]))
        if sum(len(x) for x in kept) >= n:
            break
    else:
        raise ValueError(f"fewer than {n} unseen captions in {max_draws} draws")
    fields = ("images", "objects", "relation", "position", "centres", "radii")
    tensors = [torch.cat([getattr(x, f) for x in kept])[:n] for f in fields]
    return ScenesData(*tensors, [c for x in kept for c in x.captions][:n])


def _cosine(a, b) -> float:
    return F.cosine_similarity(a, b, dim=-1).mean().item()


def measure_prior_on(
    pipe, scenes, guidance_scale=None, candidates=None, seed=0, spread=False
) -> dict:
    """Mean cosine(prior's embedding, the true image's embedding) over scenes, beside
    the text-embedding baseline; with spread=True also "draw_vs_draw", the mean cosine
    between two independent draws of the prior for the same caption (1.0 for a prior
    that gives every caption one embedding whatever the noise)."""
    true = pipe.encode_images(scenes.images).cpu()
    text = pipe.encode_prompts(scenes.captions)["text_embed"].cpu()
    draw = lambda s: pipe.prior_embeddings(  # noqa: E731
        scenes.captions, guidance_scale=guidance_scale, candidates=candidates, seed=s
    ).cpu()
    pred = draw(seed)
    out = {"prior": _cosine(pred, true), "text_embedding": _cosine(text, true)}
    if spread:
        out["draw_vs_draw"] = _cosine(pred, draw(seed + 1))
    return out


def prior_spread(row: dict) -> float:
    """How much the prior's draws of one caption differ, as a share of how much two real
    drawings of it differ: (1 - draw_vs_draw) / (1 - real_vs_real); 0 for a collapsed
    prior, about 1 for one that varies as much as the data."""
    return (1 - row["draw_vs_draw"]) / (1 - row["real_vs_real"])


def _prior_setting(pipe, scenes, real_vs_real: float, seed: int, **setting) -> dict:
    """measure_prior_on at one setting (guidance_scale, candidates), with its spread."""
    row = measure_prior_on(pipe, scenes, seed=seed, spread=True, **setting)
    return {**row, "spread": prior_spread({**row, "real_vs_real": real_vs_real})}


def measure_prior(out_dir=None, quick=False, seed=0) -> dict:
    """Cosine of the prior's samples with the true image embeddings of captions it
    never saw (none of them a training caption: checked against the recipe's training
    set), beside the text-embedding baseline and real-vs-real, and how much its draws of
    one caption differ (prior_spread)."""
    clip_model, clip_info = pretrained.load_pretrained("scenes-clip", None, out_dir)
    prior, info = pretrained.load_pretrained("scenes-prior", None, out_dir)
    schedule = pretrained.schedule_from_manifest(info)
    pipe = MiniDALLE2(
        prior,
        None,
        None,
        clip_model,
        tokenizer_from_manifest(clip_info),
        (schedule, None, None),
        prior_guidance=info["guidance_scale"],
    )
    n, groups = (16 if quick else 1000), {}
    seen = unclip_training_captions(info["seed"]) if not quick else set()
    for k, (name, (split, two)) in enumerate(PRIOR_GROUPS.items()):
        scenes = unseen_scenes(n, seed + 7000 + 10 * k, split, two, seen)
        again = render_scenes(
            scenes.objects,
            scenes.relation,
            scenes.position,
            SCENE_SIZE,
            seed=seed + 7100 + k,
        )[0]
        row = measure_prior_on(pipe, scenes, seed=seed, spread=True)
        row["real_vs_real"] = real = _cosine(
            pipe.encode_images(again).cpu(), pipe.encode_images(scenes.images).cpu()
        )
        row["one_candidate"] = _prior_setting(pipe, scenes, real, seed, candidates=1)
        row["sweep"] = {
            f"{w:g}": _prior_setting(pipe, scenes, real, seed, guidance_scale=w)
            for w in PRIOR_SWEEP
        }
        row["captions"] = n
        row["two_object_share"] = (scenes.num_objects == 2).float().mean().item()
        row["training_captions"] = sum(c in seen for c in scenes.captions)
        row["captions_sha256"] = captions_sha256(scenes.captions)
        row["spread"] = prior_spread(row)
        groups[name] = row
        print(f"{name}: {row}", flush=True)
    metrics = {
        "groups": groups,
        "sampler": {
            "num_steps": 25,
            "guidance_scale": info["guidance_scale"],
            "candidates": 2,
        },
    }
    write_manifest(
        pretrained.checkpoint_path("scenes-prior", out_dir),
        {**info, "metrics": metrics},
    )
    return pretrained.manifest("scenes-prior", out_dir)


SCENES_UPSAMPLER = UNetConfig(
    in_channels=6,  # the noisy 64x64 image + the enlarged 32x32 one
    out_channels=3,
    base_channels=32,
    channel_mults=(1, 2, 2),
    attention_levels=(),
    mid_attention=False,
)
SCENES_UPSAMPLER_TRAIN = UpsamplerTrainConfig(
    steps=1500,
    batch_size=64,
    lr=1e-3,
    warmup=100,
    ema_decay=0.999,
    p_uncond=0.0,  # no guidance
    prediction_type="eps",
    loss_weighting="none",
    seed=0,
    crop=32,
    factor=2,
)
# (first timestep, DDIM steps) measured. Started from pure noise (t = 999) the
# eps-predicting upsampler fails: at the noisiest steps x0 = (x_t - sqrt(1 - a) eps) /
# sqrt(a) magnifies its small errors in eps by up to 1 / sqrt(a) = 20,000 (chapter 8),
# and the garbage it clips to [-1, 1] survives as texture. Started from the enlarged
# low-resolution image noised to t = 700 (SDEdit), it skips those steps.
UPSAMPLER_SETTINGS = ((999, 10), (700, 5), (700, 10), (500, 10))
UPSAMPLER_DEFAULT_STEPS = 10
UPSAMPLER_START = 700


def upsampler_recipe(out_dir, quick=False, seed=0, stage="all") -> dict:
    """Train the 32 -> 64 upsampler on the scenes, then measure its PSNR against
    bicubic enlargement."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    if stage in ("all", "train"):
        cfg = UpsamplerTrainConfig(**{**asdict(SCENES_UPSAMPLER_TRAIN), "seed": seed})
        if quick:
            cfg.steps, cfg.warmup, cfg.batch_size = 4, 2, 8
        scenes = unclip_training_scenes(quick, seed)
        schedule = NoiseSchedule.make(
            UNCLIP_SCHEDULE["kind"], UNCLIP_SCHEDULE["num_timesteps"]
        )
        torch.manual_seed(seed)
        model = UnCLIPUpsampler(SCENES_UPSAMPLER)
        result = train_upsampler(model, schedule, scenes.images, cfg)
        info = _unclip_info(
            "scenes-upsampler",
            cfg,
            result.ema.model,
            result,
            seed,
            quick,
            "cpu",
            {
                "config": SCENES_UPSAMPLER.to_dict(),
                "image_size": SCENE_SIZE,
                "sampling_steps": UPSAMPLER_DEFAULT_STEPS,
                "sampling_start": UPSAMPLER_START,
                "training_images": len(scenes),
            },
        )
        save_checkpoint(
            pretrained.checkpoint_path("scenes-upsampler", out_dir),
            result.ema.model,
            info,
        )
    if stage in ("all", "measure"):
        return measure_upsampler(out_dir, quick, seed)
    return pretrained.manifest("scenes-upsampler", out_dir)


def upsampler_psnr(
    pipe, high: torch.Tensor, num_steps: int, seed=0, start_step=None
) -> dict:
    """PSNR (dB) against the real 64x64 images of the upsampler's and bicubic's
    enlargements of their 32x32 box-downsampled copies."""
    low = downsample(high, 2)
    up = pipe.upsample(low, num_steps=num_steps, seed=seed, start_step=start_step)
    bicubic = enlarge(low, high.shape[-1])
    return {
        "upsampler": psnr(up, high).mean().item(),
        "bicubic": psnr(bicubic, high).mean().item(),
    }


def measure_upsampler(out_dir=None, quick=False, seed=0) -> dict:
    model, info = pretrained.load_pretrained("scenes-upsampler", None, out_dir)
    schedule = pretrained.schedule_from_manifest(info)
    pipe = MiniDALLE2(None, None, model, None, None, (None, None, schedule))
    n = 16 if quick else 200
    high = make_scenes(n, SCENE_SIZE, seed=seed + 8000, split="all").images
    rows = {
        f"start {start}, {k} steps": {
            "start_step": start,
            "num_steps": k,
            **upsampler_psnr(pipe, high, 2 if quick else k, seed, start),
        }
        for start, k in UPSAMPLER_SETTINGS
    }
    print(json.dumps(rows, indent=1))
    default = rows[f"start {UPSAMPLER_START}, {UPSAMPLER_DEFAULT_STEPS} steps"]
    metrics = {
        "psnr": rows,
        "images": n,
        "gain_db": default["upsampler"] - default["bicubic"],
    }
    info = {**info, "sampling_start": UPSAMPLER_START}
    write_manifest(
        pretrained.checkpoint_path("scenes-upsampler", out_dir),
        {**info, "metrics": metrics},
    )
    return pretrained.manifest("scenes-upsampler", out_dir)


# prompts per group in the mini DALL-E 2's measurement: the mini SD's 200, so that both
# are measured on the same prompts with the same seeds (chapter 10 compares them); each
# image costs the decoder's 50 guided steps and the upsampler's 10 at 64x64
# real scenes whose variations are judged, half with one object: 50 sources gave a
# standard error of 0.05 on the one-object share, too wide for a gate at 0.90
VARIATION_SOURCES = 300
DECODER_GUIDANCE = 3.0
DECODER_SWEEP = (1.0, 3.0, 5.0)
ABLATION_GROUPS = {k: LDM_GROUPS[k] for k in ("one object, seen", "two objects, seen")}


def _ablation(pipe, n, seed, steps, groups=None) -> dict:
    """The paper's Sec. 5.1 in miniature: the decoder given (a) the true image embedding
    of a real scene with the prompt's labels, (b) the prior's sample, (c) the text
    embedding in place of an image embedding: prompt accuracy and FID of each."""
    judge, feats, out = SceneJudge(), scene_features(pipe.clip), {}
    for k, (name, (split, two)) in enumerate(ABLATION_GROUPS.items()):
        captions, labels = scene_prompts(n, seed + 9000 + k, split, two)
        real = render_scenes(*labels, SCENE_SIZE, seed=seed + 9100 + k)[0]
        source = render_scenes(*labels, SCENE_SIZE, seed=seed + 9500 + k)[0]
        out[name], whats = {}, ["true image embedding", "prior", "text embedding"]
        if groups is not None:  # the same prompts, seeds and real images: reuse them
            drop = ("prompts", "real_vs_real")
            row = groups[name]
            out[name]["prior"] = {key: v for key, v in row.items() if key not in drop}
            whats.remove("prior")
        for what in whats:
            if what == "true image embedding":
                e = pipe.encode_images(source)
            elif what == "prior":
                e = pipe.prior_embeddings(captions, seed=seed + k)
            else:
                e = pipe.encode_prompts(captions)["text_embed"]
            fake = pipe.from_embeddings(e, num_steps=steps, seed=seed + k)
            out[name][what] = {
                **scene_accuracy(judge(fake), *labels),
                **fid_kid_with(feats, fake, real, min(100, n)),
            }
            print(f"ablation {name}, {what}: {out[name][what]}", flush=True)
    return out


def measure_variations(pipe, n, seed, steps, per_source=2) -> dict:
    """Variations of n real scenes (one and two objects): the share that keeps every
    object's shape and colour (open-set judge), and the whole-scene accuracy."""
    captions, labels = scene_prompts(n, seed + 9600, "train", 0.5)
    source = render_scenes(*labels, SCENE_SIZE, seed=seed + 9700)[0]
    fake = pipe.variations(source, per_source, num_steps=steps, seed=seed)
    repeated = [x.repeat_interleave(per_source, 0) for x in labels]
    verdict = SceneJudge()(fake)
    kept = keeps_objects(verdict, *repeated)
    two = repeated[0][:, 1, 0] >= 0
    return {
        "sources": n,
        "per_source": per_source,
        "shape_and_colour": kept.float().mean().item(),
        "shape_and_colour_one_object": kept[~two].float().mean().item(),
        "shape_and_colour_two_objects": kept[two].float().mean().item(),
        "one_object_images": int((~two).sum()),
        **scene_accuracy(verdict, *repeated),
    }


def binding_prompts(n: int, seed: int, split: str = "train"):
    """n two-object prompts whose objects differ in shape and in colour ("a red circle
    ... a blue square"): the prompts on which attribute binding can be seen."""
    captions, labels, k = [], [], 0
    while len(captions) < n:
        c, (objects, relation, position) = scene_prompts(2 * n, seed + k, split, 1.0)
        keep = (objects[:, 0, :2] != objects[:, 1, :2]).all(1)
        captions += [x for x, ok in zip(c, keep) if ok]
        labels.append((objects[keep], relation[keep], position[keep]))
        k += 1
    labels = [torch.cat(parts)[:n] for parts in zip(*labels)]
    return captions[:n], labels


def measure_binding(pipes: dict, n: int, seed: int, steps: int) -> dict:
    """For each pipeline, on the same n binding prompts and seeds: the share of images
    that bind each colour to its shape, swap the two colours, or fail otherwise
    (metrics.attribute_binding), the same broken down by what went wrong
    (metrics.binding_outcomes, under "outcomes"), and the full prompt accuracy."""
    captions, labels = binding_prompts(n, seed + 9800)
    judge, out = SceneJudge(), {}
    for name, pipe in pipes.items():
        verdict = judge(pipe(captions, num_steps=steps, seed=seed))
        kind = attribute_binding(verdict, labels[0])
        outcome = binding_outcomes(verdict, labels[0], labels[1])
        out[name] = {
            b: (kind == i).float().mean().item() for i, b in enumerate(BINDINGS)
        }
        out[name]["outcomes"] = {
            b: (outcome == i).float().mean().item()
            for i, b in enumerate(BINDING_OUTCOMES)
        }
        out[name]["joint"] = scene_accuracy(verdict, *labels)["joint"]
        out[name]["prompts"] = n
        out[name]["captions_sha256"] = captions_sha256(captions)
        print(f"binding, {name}: {out[name]}", flush=True)
    return out


def measure_dalle2(out_dir=None, quick=False, seed=0) -> dict:
    """Measure the whole mini DALL-E 2 (text -> prior -> decoder -> upsampler) as the
    mini SD is measured, plus the ablation and variations; the figures go into the
    decoder's manifest."""
    pipe = MiniDALLE2.from_pretrained(None, out_dir)
    n, steps = (8, 2) if quick else (SCENE_MEASURE_PROMPTS, 50)
    metrics = {
        "judge": "open-set scene judge (diffusion_lib.judge.SceneJudge)",
        "features": "scene appearance features (diffusion_lib.metrics.scene_features)",
        "sampler": {
            "decoder": {
                "sampler": "ddim",
                "num_steps": steps,
                "guidance_scale": pipe.guidance_scale,
            },
            "prior": {
                "num_steps": pipe.prior_steps,
                "guidance_scale": pipe.prior_guidance,
                "candidates": pipe.candidates,
            },
            "upsampler": {"num_steps": pipe.upsampler_steps},
        },
        "groups": (groups := measure_scene_pipeline(pipe, n, seed, steps)),
        "ablation": _ablation(pipe, n, seed, steps, groups),
        "variations": measure_variations(
            pipe, 4 if quick else VARIATION_SOURCES, seed, steps
        ),
        "guidance_sweep": guidance_sweep(
            pipe, n, seed, 2 if quick else 25, scales=DECODER_SWEEP
        ),
        "guidance_sweep_steps": 2 if quick else 25,
        # measured here for both minis, on the same prompts and seeds (chapter 10)
        "binding": measure_binding(
            {
                "mini DALL-E 2": pipe,
                "mini SD": MiniStableDiffusion.from_pretrained(None, out_dir),
            },
            n,
            seed,
            steps,
        ),
    }
    print(json.dumps(metrics, indent=1))
    info = pretrained.manifest("scenes-decoder", out_dir)
    write_manifest(
        pretrained.checkpoint_path("scenes-decoder", out_dir),
        {**info, "metrics": metrics},
    )
    return pretrained.manifest("scenes-decoder", out_dir)


RECIPES = {
    "shapes-evaluator": evaluator_recipe,
    "shapes-ddpm": ddpm_recipe,
    "scenes-vae": vae_recipe,
    "scenes-clip": clip_recipe,
    "scenes-ldm": ldm_recipe,
    "scenes-decoder": decoder_recipe,
    "scenes-prior": prior_recipe,
    "scenes-upsampler": upsampler_recipe,
}


def _finetune_recipe(name):
    """Part IV's recipes live in finetune.py, which imports this module: look them up
    when they run."""

    def run(*args, **kwargs):
        from . import finetune

        return finetune.RECIPES[name](*args, **kwargs)

    run.__doc__ = f"{name}: see diffusion_lib.finetune"
    return run


PART_IV = ("scenes-lora", "scenes-inversion", "scenes-inpaint", "scenes-controlnet")
RECIPES.update({n: _finetune_recipe(n) for n in PART_IV})


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("name", choices=sorted(RECIPES) + ["ablation"])
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
        help="train, measure (the saved checkpoint), or all; for the recipes with a "
        "measure stage",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="scenes-ldm: where to train and measure (cpu, cuda); the manifest "
        "records the hardware",
    )
    parser.add_argument(
        "--grad-accum",
        type=int,
        default=1,
        help="gradient accumulation steps, under `accelerate launch` only (see "
        "diffusion_lib.scale)",
    )
    args = parser.parse_args(argv)
    if args.grad_accum < 1:
        parser.error(f"--grad-accum must be a positive integer, got {args.grad_accum}")
    if args.grad_accum > 1 and not scaling.launched():
        parser.error(
            "--grad-accum works under `accelerate launch` only: "
            f"accelerate launch -m diffusion_lib.recipes {args.name} ..."
        )
    if args.name == "ablation":
        ablation(quick=args.quick, seed=args.seed, steps=args.steps)
        return
    staged = (
        "shapes-ddpm",
        "scenes-ldm",
        "scenes-prior",
        "scenes-upsampler",
        "scenes-decoder",
        "scenes-lora",
        "scenes-inversion",
        "scenes-inpaint",
        "scenes-controlnet",
    )
    if args.stage != "all" and args.name not in staged:
        parser.error(
            f"--stage is supported for {', '.join(staged)} only, not "
            f"{args.name} (it would train from scratch)"
        )
    kwargs = {"stage": args.stage} if args.name in staged else {}
    if args.name in ("scenes-ldm", "scenes-decoder"):
        kwargs["device"] = args.device
    elif args.device != "cpu":
        parser.error(f"--device is supported for scenes-ldm only, not {args.name}")
    if scaling.launched():  # accelerate launch -m diffusion_lib.recipes NAME
        info = scaling.run_recipe(
            args.name,
            RECIPES[args.name],
            args.out,
            args.quick,
            args.seed,
            args.grad_accum,
            **kwargs,
        )
        if info is None:  # not the main process
            return
    else:
        info = RECIPES[args.name](args.out, quick=args.quick, seed=args.seed, **kwargs)
    print(
        f"wrote {info['file']} ({info['bytes'] / 1e6:.2f} MB, "
        f"sha256 {info['sha256'][:12]}...)"
    )


if __name__ == "__main__":
    main()

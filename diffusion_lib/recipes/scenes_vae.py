"""Chapter 6's autoencoder: the scene VAE whose latents the mini SD diffuses, and the
reconstruction / KL trade-off that chose its kl_weight."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import torch

from .. import compute, pretrained
from ..data import SCENE_SIZE, make_scenes
from ..metrics import SceneJudge, scene_accuracy
from ..setup import hardware
from ..train import save_checkpoint
from ..train_parts import VAETrainConfig, train_vae
from ..unet import count_parameters
from ..vae import AutoencoderKL, VAEConfig, latent_scaling_factor, psnr, reconstruct
from .base import Recipe, seed_of, where

# in Stable Diffusion's layout: diffusers' AutoencoderKL loads it by renaming keys
SCENES_VAE = VAEConfig(channels=(16, 32, 64, 64), blocks_per_level=1, sd_layout=True)
SCENES_VAE_TRAIN = VAETrainConfig(
    steps=6000, batch_size=32, lr=2e-3, warmup=100, kl_weight=1e-6, seed=0
)
SCENES_VAE_IMAGES = 10000
# a smoke run: through warm-up, every file written
SCENES_VAE_QUICK = replace(SCENES_VAE_TRAIN, steps=4, warmup=2)
VAE_TRADEOFF = (1e-6, 1e-4, 1e-2, 1.0)  # kl_weight values of the trade-off sweep


def measure_vae(model, n: int, seed: int) -> dict:
    """Reconstruction PSNR and the scene judge on originals vs reconstructions, on n
    real scenes of each split (seeds no training run uses)."""
    judge, out = SceneJudge(), {}
    for split in ("train", "holdout"):
        test_seed = seed_of(seed, "vae test scenes")
        real = make_scenes(n, SCENE_SIZE, seed=test_seed, split=split)
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
    test_seed = seed_of(seed, "vae test scenes")
    test = make_scenes(n, SCENE_SIZE, seed=test_seed, split="train").images
    rows = {}
    for beta in VAE_TRADEOFF:
        torch.manual_seed(seed)
        model = AutoencoderKL(SCENES_VAE)
        cfg = replace(
            SCENES_VAE_TRAIN, steps=steps, kl_weight=beta, warmup=min(100, steps)
        )
        with compute.aside():  # a curve's throw-away models, not the checkpoint's
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


def train_scenes_vae(out_dir, *, quick=False, seed=0, device="cpu", accelerator=None):
    """Train the scene autoencoder, measure it (and its PSNR while it trains), and
    measure the KL trade-off."""
    cfg = replace(SCENES_VAE_QUICK if quick else SCENES_VAE_TRAIN, seed=seed)
    n_images = 256 if quick else SCENES_VAE_IMAGES
    data = make_scenes(n_images, SCENE_SIZE, seed=seed, split="train")
    probe_seed = seed_of(seed, "vae curve scenes")
    probe = make_scenes(64 if quick else 200, SCENE_SIZE, seed=probe_seed).images

    def measure(step, ema_model):
        psnr_now = psnr(reconstruct(ema_model, probe), probe).mean().item()
        print(f"step {step}: PSNR, fresh scenes {psnr_now:.2f} dB", flush=True)
        return psnr_now  # kept in result.records (a resumed run keeps them too)

    torch.manual_seed(seed)
    model = AutoencoderKL(SCENES_VAE)
    result = train_vae(
        model,
        data.images,
        cfg,
        callback=measure,
        callback_every=max(1, cfg.steps // 12),
        accelerator=accelerator,
    )
    vae = result.ema.model
    curve = [{"step": step, "psnr": value} for step, value in result.records]
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
        "hardware": hardware(where(device, accelerator)),
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
    return save_checkpoint(path, vae, info, accelerator=accelerator)


VAE = Recipe(
    name="scenes-vae",
    builds="the scene autoencoder (64x64x3 -> 8x8x4 latents)",
    chapter=6,
    train=train_scenes_vae,
)

"""The shipped Part II checkpoints (scene VAE, CLIP): integrity and their quality gates,
which the tests also show can fail."""

import pytest
import torch

from diffusion_lib import pretrained
from diffusion_lib.clip import CLIP, tokenizer_from_manifest, zero_shot_one_object
from diffusion_lib.data import make_scenes
from diffusion_lib.metrics import (
    SCENE_DEGRADATIONS,
    SceneJudge,
    blur,
    scene_accuracy,
    scene_sensitivity_table,
)
from diffusion_lib.train import sha256_file
from diffusion_lib.vae import psnr, reconstruct

NAMES = ["scenes-vae", "scenes-clip"]
PSNR_GATE = 30.0  # dB, held-out scenes at 64x64
RECONSTRUCTION_JUDGE_GATE = 0.01  # judge accuracy on reconstructions vs originals
ZERO_SHOT_GATE = 0.95  # CLIP zero-shot shape and colour, one-object scenes


@pytest.mark.parametrize("name", NAMES)
def test_manifest_is_complete_and_hash_matches(name):
    info = pretrained.manifest(name)
    for key in ("recipe", "config", "seed", "training_seconds", "hardware", "metrics"):
        assert key in info, f"{name}: manifest lacks {key}"
    assert info["recipe"] == name and info["quick"] is False
    path = pretrained.checkpoint_path(name)
    assert sha256_file(path) == info["sha256"]
    assert path.stat().st_size < 5e6, "each shipped model must be a few MB at most"


@pytest.fixture(scope="module")
def vae():
    return pretrained.load_pretrained("scenes-vae")[0]


@pytest.fixture(scope="module")
def clip_model():
    model, info = pretrained.load_pretrained("scenes-clip")
    return model, tokenizer_from_manifest(info)


@pytest.mark.parametrize("split", ["train", "holdout"])
def test_gate_vae_psnr_and_judge_on_reconstructions(vae, split):
    real = make_scenes(300, seed=5151, split=split)  # a seed no recipe uses
    rec = reconstruct(vae, real.images)
    p = psnr(rec, real.images)
    judge, labels = SceneJudge(), (real.objects, real.relation, real.position)
    before = scene_accuracy(judge(real.images), *labels)["joint"]
    after = scene_accuracy(judge(rec), *labels)["joint"]
    print(f"{split}: PSNR {p.mean():.2f} dB (5th pct {p.quantile(0.05):.2f}); judge "
          f"{before:.3f} on originals, {after:.3f} on reconstructions")  # fmt: skip
    assert p.mean() >= PSNR_GATE
    assert after >= before - RECONSTRUCTION_JUDGE_GATE
    # PSNR is lenient on these mostly flat images: a copy blurred by 1 px still scores
    # above 30 dB. So the VAE must also beat that blur clearly; noise of sigma 0.1
    # fails the gate.
    blurred = psnr(blur(real.images, 1.0), real.images).mean()
    noisy = psnr((real.images + 0.1 * torch.randn_like(real.images)), real.images)
    print(f"blurred by 1 px: {blurred:.2f} dB; noise sigma 0.1: {noisy.mean():.2f} dB")
    assert p.mean() > blurred + 5 and noisy.mean() < PSNR_GATE


def test_vae_scaling_factor_gives_unit_variance(vae):
    x = make_scenes(500, seed=5252).images
    z = vae.encode_scaled(x)
    assert 0.8 < z.std().item() < 1.25, z.std()


def test_gate_clip_zero_shot(clip_model):
    model, tokenizer = clip_model
    one = make_scenes(300, seed=5353, split="train", two_object_fraction=0.0)
    acc = zero_shot_one_object(model, tokenizer, one)
    print("zero-shot:", acc)
    assert acc["shape"] >= ZERO_SHOT_GATE and acc["colour"] >= ZERO_SHOT_GATE
    torch.manual_seed(0)
    untrained = CLIP(model.config).eval()
    chance = zero_shot_one_object(untrained, tokenizer, one)
    assert chance["colour"] < ZERO_SHOT_GATE, "the gate can fail"


def test_clip_manifest_reports_retrieval_and_binding():
    metrics = pretrained.manifest("scenes-clip")["metrics"]
    for split in ("train", "holdout"):
        assert 0 <= metrics[split]["retrieval"]["text_to_image_labels"] <= 1
        for swap in ("colours swapped", "shapes swapped", "relation reversed"):
            assert 0 <= metrics[split]["binding"][swap] <= 1


def test_gate_scene_fid_sees_every_degradation(clip_model):
    rows = scene_sensitivity_table(clip_model[0], n=300, real_pairs=3)
    real = [r for r in rows if r["comparison"].startswith("real vs real")]
    degraded = [r for r in rows if not r["comparison"].startswith("real vs real")]
    fid_floor, kid_floor = max(r["fid"] for r in real), max(r["kid"] for r in real)
    for r in rows:
        print(f"{r['comparison']:20s} FID {r['fid']:8.2f}  KID {r['kid']:7.4f}")
    assert len(degraded) == len(SCENE_DEGRADATIONS)
    for r in degraded:
        assert r["fid"] > 2 * fid_floor and r["kid"] > kid_floor + 0.02, r

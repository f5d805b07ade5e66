"""The shipped Part II checkpoints (scene VAE, CLIP, the mini SD's latent UNet):
integrity and their quality gates, which the tests also show can fail."""

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_lib import interop, pretrained
from diffusion_lib.checkpoints import sha256_file
from diffusion_lib.clip import CLIP, tokenizer_from_manifest, zero_shot_one_object
from diffusion_lib.data import (
    make_scenes,
    parse_scene_caption,
    scene_caption,
    scene_prompts,
)
from diffusion_lib.metrics import (
    SCENE_DEGRADATIONS,
    SceneJudge,
    blur,
    scene_accuracy,
    scene_correct,
    scene_sensitivity_table,
)
from diffusion_lib.pipelines import MiniStableDiffusion
from diffusion_lib.vae import psnr, reconstruct

NAMES = ["scenes-vae", "scenes-clip", "scenes-ldm"]
MAX_BYTES = {"scenes-vae": 5e6, "scenes-clip": 5e6, "scenes-ldm": 9e6}
PSNR_GATE = 30.0  # dB, held-out scenes at 64x64
RECONSTRUCTION_JUDGE_GATE = 0.01  # judge accuracy on reconstructions vs originals
ZERO_SHOT_GATE = 0.95  # CLIP zero-shot shape and colour, one-object scenes
LDM_GATES = {"one object, seen": 0.90, "two objects, seen": 0.70}  # prompt accuracy


@pytest.mark.parametrize("name", NAMES)
def test_manifest_is_complete_and_hash_matches(name):
    info = pretrained.manifest(name)
    for key in ("recipe", "config", "seed", "training_seconds", "hardware", "metrics"):
        assert key in info, f"{name}: manifest lacks {key}"
    assert info["recipe"] == name and info["quick"] is False
    path = pretrained.checkpoint_path(name)
    assert sha256_file(path) == info["sha256"]
    assert path.stat().st_size < MAX_BYTES[name], "each shipped model: a few MB at most"


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
    print(
        f"{split}: PSNR {p.mean():.2f} dB (5th pct {p.quantile(0.05):.2f}); judge "
        f"{before:.3f} on originals, {after:.3f} on reconstructions"
    )
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


@pytest.fixture(scope="module")
def sd():
    return MiniStableDiffusion.from_pretrained()


def test_ldm_was_trained_on_the_shipped_vae_and_clip():
    info = pretrained.manifest("scenes-ldm")
    assert info["vae_sha256"] == pretrained.manifest("scenes-vae")["sha256"]
    assert info["clip_sha256"] == pretrained.manifest("scenes-clip")["sha256"]
    assert info["latent_shape"] == [4, 8, 8]


def test_gate_mini_sd_prompt_accuracy_in_the_manifest():
    """The recipe's measurement (200 prompts per group, 50 DDIM steps, the default
    guidance): the gates on seen prompts; held-out groups and FID beside real-vs-real
    are reported."""
    metrics = pretrained.manifest("scenes-ldm")["metrics"]
    groups = metrics["groups"]
    assert set(groups) == {
        "one object, seen",
        "two objects, seen",
        "one object, held out",
        "two objects, held out",
    }
    for name, row in groups.items():
        assert row["prompts"] >= 200 and 0 <= row["joint"] <= 1, name
        assert row["fid"] > 0 and row["real_vs_real"]["fid"] >= 0, name
    name = "one object, seen"
    assert groups[name]["joint"] >= LDM_GATES[name], groups[name]
    sweep = metrics["guidance_sweep"]
    assert {"1", "3", "8", "real"} <= set(sweep)


def test_gate_mini_sd_two_object_prompt_accuracy():
    groups = pretrained.manifest("scenes-ldm")["metrics"]["groups"]
    name = "two objects, seen"
    assert groups[name]["joint"] >= LDM_GATES[name], groups[name]


def test_mini_sd_previous_recipe_is_kept_for_the_comparison():
    """Chapter 8 compares the shipped model with the first recipe's, whose relation was
    at chance while its objects were right; the manifest keeps that measurement. The
    shipped model draws the relation far more often than chance (chapter 8: "far above
    one half"; it is 0.86 on seen prompts, not yet as sure as its objects)."""
    info = pretrained.manifest("scenes-ldm")
    before = info["previous_recipe"]["groups"]["two objects, seen"]
    now = info["metrics"]["groups"]["two objects, seen"]
    assert abs(before["relation"] - 0.5) < 0.15 and before["joint"] < 0.70
    assert min(before[a] for a in ("shape", "colour", "size", "count")) >= 0.95
    assert now["relation"] >= before["relation"] + 0.25, (now, before)
    assert info["previous_recipe"]["sha256"] != info["sha256"]
    assert info["two_object_fraction"] > info["previous_recipe"]["two_object_fraction"]


def live_accuracy(sd, n, two, guidance_scale=None, steps=50, mirror=False):
    """Prompt accuracy on fresh prompts; mirror=True draws each two-object prompt with
    its relation reversed and judges it against the prompt's labels."""
    captions, labels = scene_prompts(n, 4747, "train", two)  # seeds no recipe uses
    if mirror:
        captions = [
            scene_caption(o, r ^ 1, p, template=i)
            for i, (o, r, p) in enumerate(zip(*labels))
        ]
    images = sd(captions, num_steps=steps, seed=4848, guidance_scale=guidance_scale)
    return scene_correct(SceneJudge()(images), *labels).float().mean().item()


def test_mini_sd_reads_the_relation_on_fresh_prompts(sd):
    """Fresh seen two-object prompts: within sampling error of the gate (n = 50); the
    same prompts with the relation reversed, judged against the original labels, score
    far lower: the model draws the direction the words ask for, and the measurement
    sees it (a model that ignores the direction scores the same on both)."""
    n = 50
    acc = live_accuracy(sd, n, 1.0)
    mirrored = live_accuracy(sd, n, 1.0, mirror=True)
    gate = LDM_GATES["two objects, seen"]
    bound = gate - 2 * (gate * (1 - gate) / n) ** 0.5
    print(
        f"fresh two-object prompts: {acc:.3f} (bound {bound:.3f}); "
        f"relation reversed: {mirrored:.3f}"
    )
    assert acc >= bound
    assert mirrored < bound and acc - mirrored > 0.5


def test_mini_sd_accuracy_reproduces_on_fresh_prompts_and_can_fail(sd):
    """Fresh seen one-object prompts: within sampling error of the gate (n = 50, the
    standard error at 0.9 is 0.042, so the bound is the gate minus two of them: 0.815,
    where the shipped model measures about 1.0 and the unconditional one far lower);
    with the prompt left out (the unconditional model) the same check fails."""
    n = 50
    acc = live_accuracy(sd, n, 0.0)
    gate = LDM_GATES["one object, seen"]
    bound = gate - 2 * (gate * (1 - gate) / n) ** 0.5
    _, labels = scene_prompts(n, 4747, "train", 0.0)
    blind = sd([""] * n, num_steps=50, seed=4848, guidance_scale=1.0)  # no prompt
    blind_acc = scene_correct(SceneJudge()(blind), *labels).float().mean().item()
    print(
        f"fresh one-object prompts: {acc:.3f} (bound {bound:.3f}); "
        f"unconditional: {blind_acc:.3f}"
    )
    assert acc >= bound
    assert blind_acc < bound


def test_mini_sd_runs_the_same_inside_diffusers(sd, tmp_path):
    """The shipped mini SD, exported as a plain diffusers folder, gives the course's
    outputs in a Python where diffusion_lib cannot be imported (each component and
    the images from prompt strings, to 1e-3), and a bug planted in the course's UNet
    (every cross-attention's to_v negated) is seen by that comparison."""
    prompts = ["a large green triangle above a small red square", "a blue circle"]
    folder = interop.export_sd(sd, tmp_path / "mini-sd")
    inputs = interop.sd_reference_inputs(sd, prompts, 20, (sd.guidance_scale,), seed=3)
    theirs = interop.sd_reference_outputs(folder, inputs)
    agree = interop.agreement(interop.sd_course_outputs(sd, inputs), theirs)
    assert len(agree) == 6 and max(agree.values()) <= 1e-3, agree
    broken = copy.deepcopy(sd)
    with torch.no_grad():
        for name, module in broken.unet.named_modules():
            if name.endswith("attn2"):
                module.to_v.weight.neg_()
    caught = interop.agreement(interop.sd_course_outputs(broken, inputs), theirs)
    images = f"images_{sd.guidance_scale:g}"
    assert caught["unet"] > 100 * max(agree["unet"], 1e-5), caught
    assert caught[images] > 100 * max(agree[images], 1e-5), caught


def test_generate_command_with_the_shipped_model(tmp_path):
    out = tmp_path / "images"
    prompt = "a large red circle to the left of a small blue square"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffusion_lib",
            "generate",
            prompt,
            "--num-images",
            "4",
            "--seed",
            "0",
            "--steps",
            "50",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    files = sorted(out.glob("*.png"))
    assert len(files) == 4 and all(Image.open(f).size == (64, 64) for f in files)
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    p = parse_scene_caption(prompt)
    labels = [p[k].expand(4, *p[k].shape) for k in ("objects", "relation", "position")]
    right = scene_correct(SceneJudge()(images), *labels)
    assert right.sum() >= 2, right  # the command draws the prompt, not just anything

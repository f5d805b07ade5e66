"""The shipped checkpoints: integrity, size, and the quality gates of issue #2."""

import pytest
import torch

from diffusion_lib import pretrained
from diffusion_lib.data import make_shapes, sample_labels
from diffusion_lib.metrics import fid_kid, prompt_accuracy, real_vs_real
from diffusion_lib.recipes import EVAL_SAMPLER, IMAGE_SIZE, generate_shapes
from diffusion_lib.train import sha256_file

NAMES = ["shapes-evaluator", "shapes-ddpm"]


@pytest.mark.parametrize("name", NAMES)
def test_manifest_is_complete_and_hash_matches(name):
    info = pretrained.manifest(name)
    for key in (
        "recipe",
        "config",
        "seed",
        "training_seconds",
        "hardware",
        "metrics",
        "sha256",
    ):
        assert key in info, f"{name}: manifest lacks {key}"
    assert info["recipe"] == name and info["quick"] is False, (
        "ship the full recipe, not a smoke run"
    )
    path = pretrained.checkpoint_path(name)
    assert sha256_file(path) == info["sha256"]
    assert path.stat().st_size < 5e6, "each shipped model must be a few MB at most"


def test_all_checkpoints_together_are_small():
    total = sum(p.stat().st_size for p in pretrained.PRETRAINED_DIR.iterdir())
    assert total < 50e6


def test_loading_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="recipes"):
        pretrained.load_pretrained("shapes-ddpm", directory=tmp_path)
    with pytest.raises(ValueError, match="expected one of"):
        pretrained.load_pretrained("imagen")


@pytest.fixture(scope="module")
def evaluator():
    return pretrained.load_pretrained("shapes-evaluator")[0]


def test_gate_evaluator_accuracy_on_held_out_real_shapes(evaluator):
    test = make_shapes(
        1000, IMAGE_SIZE, seed=4242, split="all"
    )  # seeds never used in training
    acc = prompt_accuracy(
        evaluator, test.images, test.labels, ("shape", "colour", "size", "position")
    )
    print("evaluator accuracy:", acc)
    assert min(acc.values()) >= 0.98


def test_gate_prompt_accuracy_and_fid_of_the_shapes_model(evaluator):
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, info = pretrained.load_pretrained("shapes-ddpm")
    schedule = pretrained.schedule_from_manifest(info)
    n = 300
    labels = sample_labels(n, seed=777, split="train")
    fake = generate_shapes(
        model,
        schedule,
        labels,
        num_steps=EVAL_SAMPLER["num_steps"],
        guidance_scale=EVAL_SAMPLER["guidance_scale"],
        prediction_type=info["prediction_type"],
        seed=1,
    )
    acc = prompt_accuracy(evaluator, fake, labels)
    fid = fid_kid(evaluator, fake, make_shapes(n, IMAGE_SIZE, seed=31337).images)
    base = real_vs_real(
        evaluator,
        make_shapes(n, IMAGE_SIZE, seed=31337).images,
        make_shapes(n, IMAGE_SIZE, seed=4711).images,
    )
    print(
        f"prompt accuracy {acc}; FID {fid['fid']:.2f} (real vs real {base['fid']:.2f}) on {n} samples"
    )
    assert acc["joint"] >= 0.90, acc
    assert fid["fid"] < 10 * base["fid"] + 5, (fid, base)


def test_fid_fell_during_training():
    history = pretrained.manifest("shapes-ddpm")["metrics"]["history"]
    assert len(history) >= 3
    assert history[-1]["fid"] < history[0]["fid"]
    assert history[-1]["joint"] >= history[0]["joint"]

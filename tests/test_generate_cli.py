"""`python -m diffusion_lib generate` and the MiniStableDiffusion pipeline behind it,
on tiny untrained checkpoints (the shipped ones are tested in test_pretrained)."""

import subprocess
import sys

import pytest
import torch
from PIL import Image

from diffusion_lib.__main__ import main
from diffusion_lib.pipelines import MiniStableDiffusion

PROMPT = "a small red circle to the left of a large blue square"


def run(tiny_sd_dir, *args):
    main(["generate", PROMPT, "--checkpoints", str(tiny_sd_dir), "--steps", "2", *args])


def test_grid_and_folder_outputs(tiny_sd_dir, tmp_path):
    run(tiny_sd_dir, "--num-images", "3", "--out", str(tmp_path / "grid.png"))
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (3 * 66 + 2, 66 + 2)  # 64 px tiles with 2 px padding
    run(tiny_sd_dir, "--num-images", "3", "--out", str(tmp_path / "imgs"))
    files = sorted((tmp_path / "imgs").glob("*.png"))
    assert [f.name for f in files] == ["img_000.png", "img_001.png", "img_002.png"]
    assert all(Image.open(f).size == (64, 64) for f in files)


def test_same_seed_same_images_other_seed_other_images(tiny_sd_dir, tmp_path):
    for seed, name in ((0, "a"), (0, "b"), (1, "c")):
        run(tiny_sd_dir, "--num-images", "2", "--seed", str(seed),
            "--out", str(tmp_path / f"{name}.png"))  # fmt: skip
    a, b, c = (Image.open(tmp_path / f"{n}.png").tobytes() for n in "abc")
    assert a == b and a != c


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "a red circel", "--steps", "2"], "did you mean 'circle'"),
        (["generate", PROMPT, "--num-images", "0"], "must be > 0"),
        (["generate", PROMPT, "--steps", "-3"], "must be > 0"),
        (["generate", PROMPT, "--guidance-scale", "nan"], "finite number"),
        (["generate", PROMPT, "--out", "x.jpg", "--steps", "1"], "must end in .png"),
        (["generate", PROMPT, "--model", "dalle"], "invalid choice"),
        (["generate", "--variations", "x.png"], "needs --model dalle2"),
        (["generate", "--model", "dalle2"], "give a prompt or --variations"),
        (
            ["generate", PROMPT, "--model", "dalle2", "--variations", "x.png"],
            "give a prompt or --variations",
        ),
        (
            [
                "generate",
                "--model",
                "dalle2",
                "--variations",
                "missing.png",
                "--steps",
                "1",
            ],
            "cannot read an image",
        ),
    ],
)
def test_bad_input_exits_with_a_clear_message(tiny_sd_dir, tmp_path, args, message,
                                              capsys, monkeypatch):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--checkpoints", str(tiny_sd_dir)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_checkpoints_name_the_recipe(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["generate", PROMPT, "--checkpoints", str(tmp_path)])
    assert "python -m diffusion_lib.recipes scenes-ldm" in capsys.readouterr().err


def test_module_entry_point_runs(tiny_sd_dir, tmp_path):
    out = tmp_path / "one.png"
    done = subprocess.run(
        [sys.executable, "-m", "diffusion_lib", "generate", "a green triangle",
         "--num-images", "1", "--steps", "1", "--out", str(out),
         "--checkpoints", str(tiny_sd_dir)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert out.exists() and "wrote" in done.stderr


def test_pipeline_is_batch_size_independent_and_guided(tiny_sd_dir):
    pipe = MiniStableDiffusion.from_pretrained(directory=tiny_sd_dir)
    prompts = [PROMPT, "a large green triangle", "there is a cyan square in the centre"]
    one = pipe(prompts, num_steps=3, seed=5, batch_size=1)
    all_at_once = pipe(prompts, num_steps=3, seed=5, batch_size=8)
    assert one.shape == (3, 3, 64, 64) and one.abs().max() <= 1
    torch.testing.assert_close(one, all_at_once, atol=1e-5, rtol=0)
    unguided = pipe(prompts, num_steps=3, seed=5, guidance_scale=1.0)
    assert not torch.allclose(unguided, one, atol=1e-4), "guidance changes the images"
    latents = pipe.generate_latents(prompts, num_steps=3, seed=5)
    assert latents.shape == (3, *pipe.latent_shape) == (3, 4, 8, 8)
    torch.testing.assert_close(pipe.decode(latents), one)


def test_dalle2_prompt_and_variations(tiny_sd_dir, tmp_path):
    main(
        [
            "generate",
            PROMPT,
            "--model",
            "dalle2",
            "--checkpoints",
            str(tiny_sd_dir),
            "--steps",
            "2",
            "--num-images",
            "2",
            "--out",
            str(tmp_path / "t.png"),
        ]
    )
    assert Image.open(tmp_path / "t.png").size == (2 * 66 + 2, 66 + 2)
    source = tmp_path / "source.png"
    Image.new("RGB", (48, 48), (200, 30, 30)).save(source)  # resized to 64x64
    main(["generate", "--model", "dalle2", "--variations", str(source),
          "--checkpoints", str(tiny_sd_dir), "--steps", "2", "--num-images", "3",
          "--out", str(tmp_path / "v")])  # fmt: skip
    files = sorted((tmp_path / "v").glob("*.png"))
    assert len(files) == 3 and all(Image.open(f).size == (64, 64) for f in files)


def test_part_four_options(tiny_part4_dir, tmp_path):
    """--lora / --embedding, --init-image with --strength or --mask, --control: each
    writes its images; misuse is refused with a clear message."""
    source, mask = tmp_path / "source.png", tmp_path / "mask.png"
    Image.new("RGB", (64, 64), (20, 20, 26)).save(source)
    m = Image.new("L", (64, 64), 0)
    m.paste(255, (16, 16, 40, 40))
    m.save(mask)
    common = ["--checkpoints", str(tiny_part4_dir), "--steps", "2", "--num-images", "2"]
    runs = {
        "lora": ["a red diamond", "--lora", "--lora-scale", "0.5"],
        "embedding": ["a red diamond", "--embedding"],
        "img2img": [PROMPT, "--init-image", str(source), "--strength", "0.5"],
        "inpaint": [PROMPT, "--init-image", str(source), "--mask", str(mask)],
        "repaint": [PROMPT, "--init-image", str(source), "--mask", str(mask),
                    "--inpaint-method", "repaint"],
        "control": [PROMPT, "--control", str(mask)],
    }  # fmt: skip
    for name, args in runs.items():
        out = tmp_path / f"{name}.png"
        main(["generate", *args, *common, "--out", str(out)])
        assert Image.open(out).size == (2 * 66 + 2, 66 + 2), name


@pytest.mark.parametrize(
    "args, message",
    [
        ([PROMPT, "--mask", "m.png"], "--mask needs --init-image"),
        ([PROMPT, "--model", "dalle2", "--lora"], "work with --model sd only"),
        ([PROMPT, "--init-image", "a.png", "--strength", "1.5"], "must be in (0, 1]"),
        ([PROMPT, "--init-image", "a.png", "--control", "c.png"], "cannot be combined"),
        (["a red diamond"], "unknown word 'diamond'"),
    ],
)
def test_part_four_misuse_is_explained(tiny_part4_dir, args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", *args, "--checkpoints", str(tiny_part4_dir), "--steps", "1"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err

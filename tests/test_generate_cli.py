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
        run(
            tiny_sd_dir,
            "--num-images",
            "2",
            "--seed",
            str(seed),
            "--out",
            str(tmp_path / f"{name}.png"),
        )
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
def test_bad_input_exits_with_a_clear_message(
    tiny_sd_dir, tmp_path, args, message, capsys, monkeypatch
):
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
        [
            sys.executable,
            "-m",
            "diffusion_lib",
            "generate",
            "a green triangle",
            "--num-images",
            "1",
            "--steps",
            "1",
            "--out",
            str(out),
            "--checkpoints",
            str(tiny_sd_dir),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
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
    latents = pipe.generate_latents(prompts, num_steps=3, seed=5).x0
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
    main(
        [
            "generate",
            "--model",
            "dalle2",
            "--variations",
            str(source),
            "--checkpoints",
            str(tiny_sd_dir),
            "--steps",
            "2",
            "--num-images",
            "3",
            "--out",
            str(tmp_path / "v"),
        ]
    )
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
        "repaint": [
            PROMPT,
            "--init-image",
            str(source),
            "--mask",
            str(mask),
            "--inpaint-method",
            "repaint",
        ],
        "control": [PROMPT, "--control", str(mask)],
    }
    for name, args in runs.items():
        out = tmp_path / f"{name}.png"
        main(["generate", *args, *common, "--out", str(out)])
        assert Image.open(out).size == (2 * 66 + 2, 66 + 2), name


TRAINING_CODE = (
    "diffusion_lib.train",
    "diffusion_lib.train_parts",
    "diffusion_lib.scale",
    "diffusion_lib.finetune",
    "diffusion_lib.recipes",
    "accelerate",
)


def test_generate_imports_no_training_code(tiny_part4_dir, tmp_path):
    """Inference stands below training: generating with every adapter (LoRA, the
    textual-inversion word, ControlNet) and inpainting with the trained UNet loads
    none of the training loops, recipes or accelerate. Checked in a fresh process;
    importing the recipes there shows that the check can fail."""
    mask = tmp_path / "mask.png"
    m = Image.new("L", (64, 64), 0)
    m.paste(255, (16, 16, 40, 40))
    m.save(mask)
    runs = [
        ["a red diamond", "--lora"],
        ["a red diamond", "--embedding"],
        [PROMPT, "--control", str(mask)],
        [PROMPT, "--init-image", str(mask), "--mask", str(mask)],
    ]
    script = f"""
import sys
from diffusion_lib.__main__ import main
common = ["--checkpoints", {str(tiny_part4_dir)!r}, "--steps", "1"]
for i, args in enumerate({runs!r}):
    out = {str(tmp_path)!r} + f"/{{i}}.png"
    main(["generate", *args, *common, "--overwrite", "--out", out])
if len(sys.argv) > 1:
    import diffusion_lib.recipes
print(sorted(m for m in sys.modules if m.startswith({TRAINING_CODE!r})))
"""
    for extra in ([], ["--import-recipes"]):
        run = subprocess.run(
            [sys.executable, "-c", script, *extra],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        loaded = run.stdout.strip().splitlines()[-1]
        if extra:
            assert "'diffusion_lib.train'" in loaded, loaded
        else:
            assert loaded == "[]", loaded
    assert len(list(tmp_path.glob("?.png"))) == 4


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


# ------------------------------------------- nothing lost, mixed or silently wrong


def fails(capsys, *args):
    """The one-line error of `generate ARGS` (exit status 2, no traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_an_existing_grid_is_kept_unless_overwrite(tiny_sd_dir, tmp_path, capsys):
    out = tmp_path / "grid.png"
    out.write_bytes(b"my earlier grid")
    assert "exists; pass --overwrite" in fails(
        capsys, PROMPT, "--checkpoints", str(tiny_sd_dir), "--out", str(out)
    )
    assert out.read_bytes() == b"my earlier grid"
    run(tiny_sd_dir, "--num-images", "1", "--out", str(out), "--overwrite")
    assert Image.open(out).size == (64, 64)  # one image: no grid padding
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temporary left


def test_a_folder_never_mixes_two_runs(tiny_sd_dir, tmp_path, capsys):
    out = tmp_path / "imgs"
    run(tiny_sd_dir, "--num-images", "2", "--out", str(out))
    assert "already holds 2 files" in fails(
        capsys,
        PROMPT,
        "--checkpoints",
        str(tiny_sd_dir),
        "--out",
        str(out),
        "--num-images",
        "1",
        "--steps",
        "1",
    )
    run(tiny_sd_dir, "--num-images", "1", "--out", str(out), "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["img_000.png"]
    (out / "notes.txt").write_text("mine")
    assert "other files than img_" in fails(
        capsys,
        PROMPT,
        "--checkpoints",
        str(tiny_sd_dir),
        "--out",
        str(out),
        "--overwrite",
        "--steps",
        "1",
    )
    assert (out / "notes.txt").read_text() == "mine"


def test_a_folder_filled_while_sampling_is_not_mixed(tmp_path):
    from diffusion_lib.__main__ import Output

    out = tmp_path / "imgs"
    output = Output(out, 2)
    output.add(torch.zeros(2, 3, 8, 8))
    out.mkdir()
    (out / "img_000.png").write_bytes(b"another run")
    with pytest.raises(ValueError, match="filled while sampling"):
        output.finish()
    assert (out / "img_000.png").read_bytes() == b"another run"
    output.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]


def test_the_output_and_inputs_are_checked_before_anything_loads(tmp_path, capsys):
    """Checkpoints that do not exist: the error is about the bad output, image or
    device, so it came first."""
    missing = ["--checkpoints", str(tmp_path / "no-checkpoints")]
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert "cannot write to" in fails(
        capsys, PROMPT, *missing, "--out", str(a_file / "grid.png")
    )
    assert "cannot write to /proc" in fails(
        capsys, PROMPT, *missing, "--out", "/proc/grid.png"
    )
    assert "is a file, not a folder" in fails(
        capsys, PROMPT, *missing, "--out", str(a_file)
    )
    assert "unknown device 'banana'" in fails(
        capsys, PROMPT, *missing, "--device", "banana"
    )
    if not torch.cuda.is_available():
        assert "no CUDA GPU here" in fails(capsys, PROMPT, *missing, "--device", "cuda")
    truncated = tmp_path / "truncated.png"
    noise = torch.randint(0, 256, (64, 64, 3), dtype=torch.uint8).numpy()
    Image.fromarray(noise).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    huge = tmp_path / "huge.png"
    Image.new("1", (20000, 20000)).save(huge)
    for image, message in (
        (truncated, "cannot read an image"),
        (huge, "larger than 16,777,216 pixels"),
        (tmp_path, "is a folder"),
    ):
        err = fails(capsys, PROMPT, *missing, "--init-image", str(image))
        assert message in err, err
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


@pytest.mark.parametrize(
    "args, message",
    [
        (["--guidance-scale", "1e30"], "--guidance-scale must be from 0 to 50"),
        (["--lora", "--lora-scale", "10"], "--lora-scale must be from 0 to 4"),
        (["--lora-scale", "0.5"], "--lora-scale needs --lora"),
        (["--strength", "0.5"], "--strength is for image-to-image only"),
        (["--inpaint-method", "repaint"], "--inpaint-method is for inpainting only"),
        (["--seed", str(2**32)], "--seed must be from 0 to 2**32 - 1"),
        (["--seed", "-1"], "--seed must be from 0"),
        (["--num-images", "100000"], "--num-images is at most 10,000"),
        (["--num-images", "300"], "a grid holds at most 256 images"),
        (["--steps", "5000"], "--steps is at most 1000"),
    ],
)
def test_options_that_would_mislead_are_refused(tiny_part4_dir, args, message, capsys):
    err = fails(capsys, "a red circle", "--checkpoints", str(tiny_part4_dir), *args)
    assert message in err, err


def test_lora_on_the_inpainting_unet_is_refused(tiny_part4_dir, tmp_path, capsys):
    source, mask = tmp_path / "s.png", tmp_path / "m.png"
    Image.new("RGB", (64, 64), (20, 20, 26)).save(source)
    Image.new("L", (64, 64), 255).save(mask)
    common = [
        PROMPT,
        "--checkpoints",
        str(tiny_part4_dir),
        "--init-image",
        str(source),
        "--mask",
        str(mask),
        "--lora",
        "--steps",
        "1",
    ]
    assert "--lora has no effect on the inpainting UNet" in fails(capsys, *common)
    outs = {}
    for scale in ("0", "1"):  # with RePaint the adapter is used
        out = tmp_path / f"repaint{scale}.png"
        main(
            [
                "generate",
                *common,
                "--inpaint-method",
                "repaint",
                "--lora-scale",
                scale,
                "--num-images",
                "1",
                "--out",
                str(out),
            ]
        )
        outs[scale] = Image.open(out).tobytes()
    assert outs["0"] != outs["1"]


def test_lora_and_control_together(tiny_part4_dir, tmp_path):
    control = tmp_path / "c.png"
    Image.new("L", (64, 64), 255).save(control)
    out = tmp_path / "both.png"
    main(
        [
            "generate",
            "a red diamond",
            "--checkpoints",
            str(tiny_part4_dir),
            "--lora",
            "--control",
            str(control),
            "--steps",
            "1",
            "--num-images",
            "1",
            "--out",
            str(out),
        ]
    )
    assert Image.open(out).size == (64, 64)  # one image: no grid padding


def test_full_width_prompts_are_normalised_and_accents_named(
    tiny_sd_dir, tmp_path, capsys
):
    plain, wide = tmp_path / "plain.png", tmp_path / "wide.png"
    run(tiny_sd_dir, "--num-images", "1", "--out", str(plain))
    main(
        [
            "generate",
            "ａ ｓｍａｌｌ ｒｅｄ ｃｉｒｃｌｅ ｔｏ ｔｈｅ ｌｅｆｔ ｏｆ ａ "
            "ｌａｒｇｅ ｂｌｕｅ ｓｑｕａｒｅ",
            "--checkpoints",
            str(tiny_sd_dir),
            "--steps",
            "2",
            "--num-images",
            "1",
            "--out",
            str(wide),
        ]
    )
    assert Image.open(plain).tobytes() == Image.open(wide).tobytes()
    err = fails(capsys, "a rèd circle", "--checkpoints", str(tiny_sd_dir))
    assert "'rèd'" in err and "cannot read" in err


def test_many_images_are_drawn_in_batches_into_a_folder(tiny_sd_dir, tmp_path):
    out = tmp_path / "many"
    run(tiny_sd_dir, "--num-images", "20", "--steps", "1", "--out", str(out))
    files = sorted(out.glob("img_*.png"))
    assert len(files) == 20 and files[-1].name == "img_019.png"
    # the first batch of 16 is what --num-images 16 gives: same seed, same images
    first = tmp_path / "first"
    run(tiny_sd_dir, "--num-images", "16", "--steps", "1", "--out", str(first))
    assert all((out / p.name).read_bytes() == p.read_bytes() for p in first.iterdir())

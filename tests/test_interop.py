"""The mini Stable Diffusion inside diffusers: the same images as the library's own
pipeline for the same seed and scheduler, through StableDiffusionPipeline and through
its saved folder; the real SD 1.5 loader, exercised offline on a tiny real pipeline."""

import json

import pytest
import torch

from diffusion_lib.interop import (
    course_scheduler,
    diffusers_generate,
    load_diffusers,
    load_sd15,
    save_diffusers,
    to_diffusers,
)
from diffusion_lib.pipelines import MiniStableDiffusion
from diffusion_lib.schedules import NoiseSchedule

PROMPTS = [
    "a small red circle to the left of a large blue square",
    "a large green triangle in the top right",
    "a cyan square above a purple circle",
]
TOLERANCE = 1e-3  # float32, the bar; measured differences are printed


@pytest.fixture(scope="module")
def pipe(tiny_sd_dir):
    return MiniStableDiffusion.from_pretrained(directory=tiny_sd_dir)


@pytest.mark.parametrize("guidance_scale", [3.0, 1.0])
def test_diffusers_pipeline_gives_the_same_images(pipe, guidance_scale):
    ours = pipe(PROMPTS, num_steps=10, seed=3, guidance_scale=guidance_scale)
    theirs = diffusers_generate(
        to_diffusers(pipe), pipe, PROMPTS, 10, guidance_scale, 3
    )
    diff = (ours - theirs).abs().max().item()
    print(f"max |library - diffusers| = {diff:.2e} (guidance {guidance_scale})")
    assert theirs.shape == ours.shape == (3, 3, 64, 64)
    assert diff <= TOLERANCE


@pytest.mark.parametrize("kind", ["scaled_linear", "cosine", "linear"])
def test_course_scheduler_has_the_library_schedule(kind):
    ours = NoiseSchedule.make(kind, 1000).alphas_cumprod
    theirs = course_scheduler({"kind": kind, "num_timesteps": 1000}).alphas_cumprod
    torch.testing.assert_close(theirs.double(), ours, atol=1e-6, rtol=1e-5)


def test_step_counts_that_do_not_divide_t_are_refused(pipe):
    """diffusers' DDIM steps from t to t - T // n: with n = 3 that is 666 -> 333, but
    the trailing timesteps are 999, 666, 332, so the images would differ."""
    from diffusers import DDIMScheduler

    scheduler = to_diffusers(pipe).scheduler
    assert isinstance(scheduler, DDIMScheduler)
    scheduler.set_timesteps(3)
    assert scheduler.timesteps.tolist() == [999, 666, 332]
    with pytest.raises(ValueError, match="does not divide the 1000 training timesteps"):
        diffusers_generate(to_diffusers(pipe), pipe, PROMPTS[:1], num_steps=3)


def test_course_scheduler_rejects_an_unknown_schedule():
    with pytest.raises(ValueError, match="no diffusers DDIM equivalent"):
        course_scheduler({"kind": "sigmoid", "num_timesteps": 1000})


def test_saved_folder_loads_offline_and_agrees(pipe, tmp_path):
    folder = save_diffusers(pipe, tmp_path / "mini-sd")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["unet"] == ["diffusion_lib.interop", "CourseUNet"]
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").exists()
    loaded = load_diffusers(folder)
    ours = pipe(PROMPTS[:2], num_steps=5, seed=1)
    theirs = diffusers_generate(loaded, pipe, PROMPTS[:2], 5, None, 1)
    assert (ours - theirs).abs().max().item() <= TOLERANCE
    assert loaded.vae.config.scaling_factor == pipe.vae.config.scaling_factor


def test_course_unet_rejects_what_it_cannot_do(pipe):
    unet = to_diffusers(pipe).unet
    x, ctx = torch.zeros(1, 4, 8, 8), pipe.encode_prompts(PROMPTS[:1])
    assert unet(x, 10, encoder_hidden_states=ctx, return_dict=False)[0].shape == x.shape
    with pytest.raises(ValueError, match="CourseUNet takes"):
        unet(x, 10, encoder_hidden_states=ctx, timestep_cond=torch.zeros(1, 4))


def tiny_real_sd_folder(folder):
    """A real (tiny, random) SD pipeline of diffusers / transformers components with a
    tiny CLIP BPE tokenizer, saved in diffusers' format: what load_sd15 reads."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from diffusion_lib.interop import StableDiffusionPipeline, course_scheduler

    torch.manual_seed(0)
    words = ["a</w>", "red</w>", "circle</w>", "r", "e", "re", "d</w>", "c", "i", "l"]
    vocab = {w: i for i, w in enumerate(["<|startoftext|>", "<|endoftext|>", *words])}
    (folder / "tok").mkdir(parents=True)
    (folder / "tok" / "vocab.json").write_text(json.dumps(vocab))
    (folder / "tok" / "merges.txt").write_text("#version: 0.2\nr e\n")
    tokenizer = CLIPTokenizer(
        str(folder / "tok" / "vocab.json"),
        str(folder / "tok" / "merges.txt"),
        model_max_length=77,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=4,
        attention_head_dim=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8),
        latent_channels=4,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )
    sd = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        unet=unet,
        safety_checker=None,
        feature_extractor=None,
        scheduler=course_scheduler({"kind": "linear", "num_timesteps": 1000}),
        requires_safety_checker=False,
    )
    sd.save_pretrained(str(folder / "sd"))
    return folder / "sd"


def test_sd15_loader_runs_offline_on_a_tiny_real_pipeline(tmp_path):
    sd = load_sd15(
        repo=str(tiny_real_sd_folder(tmp_path)), device="cpu", dtype=torch.float32
    )
    out = sd(
        "a red circle",
        num_inference_steps=2,
        height=16,
        width=16,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.images.shape == (1, 3, 16, 16)
    assert torch.isfinite(out.images).all()


def test_sd15_loader_explains_a_missing_model(tmp_path):
    with pytest.raises(RuntimeError, match="needs the Internet"):
        load_sd15(repo="no-such-org/no-such-model", device="cpu", local_files_only=True)


def test_diffusers_adapter_loading_runs_offline_on_a_tiny_real_pipeline(tmp_path):
    """What chapter 11 runs on SD 1.5 online: a LoRA of the UNet's attention
    projections saved in diffusers' format and loaded with load_lora_weights (it
    changes the output, and strength 0 undoes it), and a textual-inversion embedding
    loaded with load_textual_inversion (the token gets exactly that row)."""
    from peft import LoraConfig, get_peft_model_state_dict
    from safetensors.torch import save_file

    from diffusion_lib.adapters import LORA_TARGETS
    from diffusion_lib.interop import StableDiffusionPipeline, load_adapters

    folder = tiny_real_sd_folder(tmp_path)
    trainer = load_sd15(repo=str(folder), device="cpu", dtype=torch.float32)
    trainer.unet.add_adapter(
        LoraConfig(
            r=2,
            lora_alpha=2,
            init_lora_weights="gaussian",
            target_modules=list(LORA_TARGETS),
        )
    )
    for name, p in trainer.unet.named_parameters():
        if "lora_B" in name:  # as if trained: B is no longer zero
            torch.nn.init.normal_(p, std=0.5)
    StableDiffusionPipeline.save_lora_weights(
        tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(trainer.unet)
    )
    kw = dict(num_inference_steps=2, height=16, width=16, output_type="pt")
    run = lambda sd: (
        sd(
            "a red circle",
            generator=torch.Generator().manual_seed(0),  # noqa: E731
            **kw,
        ).images
    )
    sd = load_sd15(repo=str(folder), device="cpu", dtype=torch.float32)
    base = run(sd)
    load_adapters(sd, lora=str(tmp_path / "lora"))
    adapted = run(sd)
    assert (adapted - base).abs().max() > 1e-3
    torch.testing.assert_close(adapted, run(trainer), atol=1e-4, rtol=0)
    sd.set_adapters(["course"], adapter_weights=[0.0])
    torch.testing.assert_close(run(sd), base, atol=1e-5, rtol=0)
    row = torch.randn(16)
    save_file({"emb_params": row[None]}, str(tmp_path / "orange.safetensors"))
    load_adapters(sd, embedding=str(tmp_path / "orange.safetensors"), token="<orange>")
    token_id = sd.tokenizer.convert_tokens_to_ids("<orange>")
    table = sd.text_encoder.get_input_embeddings().weight
    torch.testing.assert_close(table[token_id], row)
    with pytest.raises(ValueError, match="pass a lora"):
        load_adapters(sd)


def test_real_editing_and_controlnet_pipelines_run_offline(tmp_path):
    """Chapters 12 and 13 on the real model, run on the tiny real pipeline: img2img and
    inpainting share its components; a ControlNetModel made from its UNet adds nothing
    at the start (zero convolutions), as the course's does."""
    from diffusers import ControlNetModel

    from diffusion_lib.interop import outlines, sd15_editors, sd15_with_controlnet

    sd = load_sd15(
        repo=str(tiny_real_sd_folder(tmp_path)), device="cpu", dtype=torch.float32
    )
    img2img, inpaint = sd15_editors(sd)
    assert img2img.unet is sd.unet and inpaint.vae is sd.vae
    image = torch.rand(1, 3, 16, 16)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    kw = dict(num_inference_steps=4, output_type="pt", height=16, width=16)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    out = img2img(
        "a red circle",
        image=image,
        strength=0.5,
        generator=g(),
        output_type="pt",
        num_inference_steps=4,
    ).images
    assert out.shape == (1, 3, 16, 16) and torch.isfinite(out).all()
    out = inpaint(
        "a red circle", image=image, mask_image=mask, generator=g(), **kw
    ).images
    assert out.shape == (1, 3, 16, 16) and torch.isfinite(out).all()
    control = outlines(mask)
    assert control.shape == (1, 3, 16, 16) and control.sum() == 3 * (64 - 36)
    net = ControlNetModel.from_unet(sd.unet, conditioning_embedding_out_channels=(4, 8))
    cn = sd15_with_controlnet(sd, net)
    base = sd("a red circle", generator=g(), **kw).images
    steered = cn("a red circle", image=control, generator=g(), **kw).images
    torch.testing.assert_close(steered, base, atol=1e-5, rtol=0)

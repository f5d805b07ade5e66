"""The mini SD exported as an ordinary Stable Diffusion: diffusers and transformers load
the folder in a Python where `diffusion_lib` cannot be imported
(interop.run_without_course), run each component
and the whole pipeline from plain prompt strings, and agree with the course's own
modules. Because the other side is an independent implementation (diffusers' UNet
and VAE, transformers' CLIP), a bug planted in the course's code makes the two
disagree: each planted bug below must be caught."""

import json

import pytest
import torch
import torch.nn.functional as F

from diffusion_lib import interop
from diffusion_lib.clip import CLIP, CLIPConfig, scene_tokenizer
from diffusion_lib.pipelines import MiniStableDiffusion, stage_generator
from diffusion_lib.schedules import NoiseSchedule
from diffusion_lib.unet import UNet, UNetConfig
from diffusion_lib.vae import AutoencoderKL, VAEConfig

PROMPTS = [
    "a small red circle to the left of a large blue square",
    "a large green triangle in the top right",
]
STEPS, SEED, GUIDANCE = 10, 3, 3.0
TOLERANCE = 1e-3  # the bar for images in [-1, 1]; float32 gives ~1e-5


def tiny_sd_pipeline(seed: int = 0) -> MiniStableDiffusion:
    """A tiny mini SD in SD's layout with every weight random (no zero-initialised
    layer that would hide a wrong mapping)."""
    torch.manual_seed(seed)
    tok = scene_tokenizer()
    clip = CLIP(
        CLIPConfig(
            vocab_size=tok.vocab_size,
            text_width=16,
            text_layers=2,
            text_heads=2,
            vision_width=16,
            vision_layers=1,
            vision_heads=2,
            embed_dim=8,
        )
    )
    vae = AutoencoderKL(
        VAEConfig(channels=(8, 8, 16, 16), groups=4, scaling_factor=0.5, sd_layout=True)
    )
    unet = UNet(
        UNetConfig(
            in_channels=4,
            out_channels=4,
            base_channels=8,
            channel_mults=(1, 2),
            attention_levels=(1,),  # a DownBlock2D and a CrossAttnDownBlock2D
            heads=2,
            groups=4,
            context_dim=16,
            spatial_transformer=True,
        )
    )
    with torch.no_grad():
        for model in (clip, vae, unet):
            for name, p in model.named_parameters():
                if p.ndim > 1 or name.endswith("bias"):
                    p.normal_(0, 0.15)
    models = [m.eval().requires_grad_(False) for m in (unet, vae, clip)]
    schedule = NoiseSchedule.make("scaled_linear", 1000)
    return MiniStableDiffusion(*models, tok, schedule)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(pipe, folder, inputs, the other side's outputs)."""
    pipe = tiny_sd_pipeline()
    folder = interop.export_sd(pipe, tmp_path_factory.mktemp("sd_export") / "mini-sd")
    inputs = interop.sd_reference_inputs(pipe, PROMPTS, STEPS, (GUIDANCE, 1.0), SEED)
    return pipe, folder, inputs, interop.sd_reference_outputs(folder, inputs)


def course_outputs(pipe, inputs):
    return interop.sd_course_outputs(pipe, inputs)


differences = interop.agreement


def test_folder_names_only_diffusers_and_transformers_classes(exported):
    _, folder, _, theirs = exported
    index = json.loads((folder / "model_index.json").read_text())
    libraries = {v[0] for k, v in index.items() if isinstance(v, list) and v[0]}
    assert libraries == {"diffusers", "transformers"}, index
    assert theirs["classes"]["unet"] == "diffusers.UNet2DConditionModel"
    assert theirs["classes"]["vae"] == "diffusers.AutoencoderKL"
    assert theirs["classes"]["text_encoder"] == "transformers.CLIPTextModel"
    assert theirs["classes"]["tokenizer"].startswith("transformers.")
    assert theirs["classes"]["scheduler"] == "diffusers.DDIMScheduler"
    assert not list(folder.rglob("*.bin"))  # safetensors only


def test_every_component_and_the_pipeline_agree(exported):
    pipe, _, inputs, theirs = exported
    diff = differences(course_outputs(pipe, inputs), theirs)
    print("max |course - diffusers/transformers|:", diff)
    assert all(v <= TOLERANCE for v in diff.values()), diff
    # the images are not trivially equal (e.g. all clamped to one value)
    assert theirs[f"images_{GUIDANCE:g}"].std() > 0.1
    assert len(diff) == 7  # 5 components and 2 guidance scales


def planted(pipe, bug: str):
    """Undo-able bugs in the course's code (not in the weights, which the export
    would carry to the other side): (name, undo)."""
    handles = []
    if bug == "unet: cross-attention to_v negated":
        for name, m in pipe.unet.named_modules():
            if name.endswith("attn2.to_v"):
                handles.append(m.register_forward_hook(lambda m, a, out: -out))
    elif bug == "vae: post_quant_conv skipped":
        conv = pipe.vae.post_quant_conv
        handles.append(conv.register_forward_hook(lambda m, a, out: a[0]))
    elif bug == "vae: downsampling pads the top-left edge":
        for m in pipe.vae.encoder.down:
            handles.append(
                m.register_forward_pre_hook(
                    lambda m, a: (torch.nn.functional.pad(a[0], (1, 0, 1, 0)),)
                )
            )
            m.forward, m._plain = (lambda x, m=m: torch.nn.Conv2d.forward(m, x)), True
    elif bug == "text encoder: no causal mask":
        mask = pipe.text_encoder.text.causal_mask
        saved = mask.clone()
        mask.fill_(True)
        return lambda: mask.copy_(saved)
    else:
        raise ValueError(bug)

    def undo():
        for h in handles:
            h.remove()
        for m in pipe.vae.encoder.down:
            if getattr(m, "_plain", False):
                del m.forward, m._plain

    return undo


@pytest.mark.parametrize(
    "bug, caught_by",
    [
        ("unet: cross-attention to_v negated", ["unet", f"images_{GUIDANCE:g}"]),
        ("vae: post_quant_conv skipped", ["vae_decode", f"images_{GUIDANCE:g}"]),
        ("vae: downsampling pads the top-left edge", ["vae_mean", "vae_logvar"]),
        ("text encoder: no causal mask", ["text_states", f"images_{GUIDANCE:g}"]),
    ],
)
def test_a_planted_bug_in_the_course_code_is_caught(exported, bug, caught_by):
    pipe, _, inputs, theirs = exported
    undo = planted(pipe, bug)
    try:
        diff = differences(course_outputs(pipe, inputs), theirs)
    finally:
        undo()
    print(bug, diff)
    for key in caught_by:
        assert diff[key] > 100 * TOLERANCE, (bug, key, diff)
    # and with the bug removed, everything agrees again
    assert max(differences(course_outputs(pipe, inputs), theirs).values()) <= TOLERANCE


def test_import_gives_back_the_course_modules_and_images(exported):
    pipe, folder, inputs, _ = exported
    back = interop.import_sd(folder)
    for ours, theirs in ((pipe.unet, back.unet), (pipe.vae, back.vae)):
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    # SD's CLIPTextModel has no projection (the pipeline reads the token states)
    text = {
        k: v
        for k, v in pipe.text_encoder.state_dict().items()
        if k.startswith("text.") and k != "text.projection.weight"
    }
    for key, value in text.items():
        assert torch.equal(back.text_encoder.state_dict()[key], value), key
    assert back.tokenizer.ids == pipe.tokenizer.ids
    images = back(PROMPTS, num_steps=STEPS, seed=SEED, guidance_scale=GUIDANCE)
    assert (images - pipe(PROMPTS, num_steps=STEPS, seed=SEED)).abs().max() <= 1e-5


def test_the_tokenizer_gives_the_course_ids_in_exported_order(exported):
    from diffusion_lib import convert

    pipe = exported[0]
    hf = convert.hf_tokenizer(pipe.tokenizer)
    texts = PROMPTS + ["", "A Red, circle in the CENTER!"]
    ids = hf(texts, padding="max_length", max_length=20, return_tensors="pt")
    order = convert.hf_token_order(pipe.tokenizer.vocab_size)
    assert torch.equal(order[ids.input_ids], pipe.tokenizer(texts))
    assert len(hf) == pipe.tokenizer.vocab_size  # one id per embedding row
    with pytest.raises(Exception, match="Missing \\[UNK\\] token"):
        hf("a pink circle")  # an unknown word fails, as in the course


def test_models_in_the_course_first_layout_are_refused():
    pipe = tiny_sd_pipeline()
    from dataclasses import replace

    pipe.vae = AutoencoderKL(replace(pipe.vae.config, sd_layout=False))
    with pytest.raises(ValueError, match="sd_layout=True"):
        interop.sd_pipeline(pipe)
    pipe = tiny_sd_pipeline()
    pipe.unet = UNet(replace(pipe.unet.config, spatial_transformer=False))
    with pytest.raises(ValueError, match="spatial_transformer=True"):
        interop.sd_pipeline(pipe)


# ----------------------------------------------------------- LoRA and a new word

ADAPTER_SIDE = """
import torch
from diffusers import StableDiffusionPipeline

base, lora, word, inputs, out = sys.argv[1:6]
x = torch.load(inputs)
sd = StableDiffusionPipeline.from_pretrained(base, local_files_only=True)
sd.set_progress_bar_config(disable=True)
sd.load_lora_weights(lora)
sd.load_textual_inversion(f"{lora}/{word}.safetensors", token=word)

def images():
    return sd(x["prompts"], num_inference_steps=x["steps"],
              guidance_scale=x["guidance"], output_type="pt",
              generator=torch.Generator().manual_seed(x["seed"])).images * 2 - 1

result = {"loaded": images()}
sd.fuse_lora()
result["fused"] = images()
sd.unfuse_lora()
sd.unload_lora_weights()
result["unloaded"] = images()
torch.save(result, out)
"""
WORD = "diamond"
WORD_PROMPTS = [
    "a small red diamond to the left of a large blue square",
    "a large green diamond in the top right",
]


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """A tiny SD exported plain, then given a new word and a LoRA (alpha != rank, so
    that the scale alpha / r must travel with the file), exported in diffusers'
    formats and loaded by diffusers: (pipe, lora folder, the other side's images)."""
    from diffusion_lib.adapters import add_lora, add_words

    pipe = tiny_sd_pipeline(seed=1)
    base = tmp_path_factory.mktemp("sd_lora")
    interop.export_sd(pipe, base / "mini-sd")
    pipe.tokenizer, table = add_words(
        pipe.tokenizer, pipe.text_encoder.text, WORD, ["circle"]
    )
    gen = torch.Generator().manual_seed(5)
    add_lora(pipe.unet, r=4, alpha=8.0, generator=gen)
    with torch.no_grad():
        table.new.normal_(0, 0.5, generator=gen)
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:  # B starts at zero: make the update visible
                p.normal_(0, 0.3, generator=gen)
    folder = interop.export_lora(pipe, base / "lora")
    inputs = {
        "prompts": WORD_PROMPTS,
        "steps": STEPS,
        "guidance": GUIDANCE,
        "seed": stage_generator(SEED, "latents").initial_seed(),
    }
    torch.save(inputs, base / "inputs.pt")
    args = [base / "mini-sd", folder, WORD, base / "inputs.pt", base / "out.pt"]
    interop.run_without_course(ADAPTER_SIDE, *args)
    return pipe, folder, torch.load(base / "out.pt")


def test_the_lora_and_its_word_load_in_diffusers_and_agree(adapted):
    from diffusion_lib.adapters import set_lora_scale

    pipe, folder, theirs = adapted
    assert (folder / "pytorch_lora_weights.safetensors").exists()
    assert (folder / f"{WORD}.safetensors").exists()
    ours = pipe(WORD_PROMPTS, num_steps=STEPS, seed=SEED, guidance_scale=GUIDANCE)
    for key in ("loaded", "fused"):
        diff = (ours - theirs[key]).abs().max().item()
        print(f"LoRA {key}: max |course - diffusers| = {diff:.2e}")
        assert diff <= TOLERANCE, key
    # unloaded, diffusers draws the base model with the word: the course at scale 0
    set_lora_scale(pipe.unet, 0.0)
    try:
        base = pipe(WORD_PROMPTS, num_steps=STEPS, seed=SEED, guidance_scale=GUIDANCE)
    finally:
        set_lora_scale(pipe.unet, 1.0)
    assert (base - theirs["unloaded"]).abs().max().item() <= TOLERANCE
    assert (base - ours).abs().max().item() > 100 * TOLERANCE  # the LoRA matters


def test_a_lora_scale_lost_in_export_is_caught(adapted):
    """The file carries alpha / r = 2: a course LoRA run at scale 1/2 (what diffusers
    would give if the alpha were dropped and the scale taken as 1) disagrees."""
    from diffusion_lib.adapters import set_lora_scale

    pipe, _, theirs = adapted
    set_lora_scale(pipe.unet, 0.5)
    try:
        wrong = pipe(WORD_PROMPTS, num_steps=STEPS, seed=SEED, guidance_scale=GUIDANCE)
    finally:
        set_lora_scale(pipe.unet, 1.0)
    assert (wrong - theirs["loaded"]).abs().max().item() > 100 * TOLERANCE


# -------------------------------------------------------------------- ControlNet

CONTROL_SIDE = """
import torch
from diffusers import (ControlNetModel, StableDiffusionControlNetPipeline,
                       StableDiffusionPipeline)

base, net, inputs, out = sys.argv[1:5]
x = torch.load(inputs)
sd = StableDiffusionPipeline.from_pretrained(base, local_files_only=True)
controlnet = ControlNetModel.from_pretrained(net, local_files_only=True)
pipe = StableDiffusionControlNetPipeline.from_pipe(sd, controlnet=controlnet)
pipe.set_progress_bar_config(disable=True)
result = {"class": type(controlnet).__name__}
for scale in (1.0, 0.5):
    result[scale] = pipe(x["prompts"], image=x["control"],
        num_inference_steps=x["steps"], guidance_scale=x["guidance"],
        controlnet_conditioning_scale=scale,
        generator=torch.Generator().manual_seed(x["seed"]), output_type="pt",
    ).images * 2 - 1
torch.save(result, out)
"""


@pytest.fixture(scope="module")
def controlled(tmp_path_factory):
    """A tiny SD with a ControlNet (the released hint encoder, every weight random,
    the zero convolutions too), exported and run by diffusers'
    StableDiffusionControlNetPipeline: (pipe, control, the other side's images)."""
    from diffusion_lib.controlnet import ControlNet

    pipe = tiny_sd_pipeline(seed=2)
    base = tmp_path_factory.mktemp("sd_controlnet")
    interop.export_sd(pipe, base / "mini-sd")
    net = ControlNet(pipe.unet, 1, hint_widths=(4, 8, 8, 16))
    gen = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.15, generator=gen)
    pipe.controlnet = net.eval().requires_grad_(False)
    folder = interop.export_controlnet(pipe, base / "controlnet")
    control = (torch.rand(2, 1, 64, 64, generator=gen) > 0.5).float()
    inputs = {
        "prompts": PROMPTS,
        "control": control,
        "steps": STEPS,
        "guidance": GUIDANCE,
        "seed": stage_generator(SEED, "latents").initial_seed(),
    }
    torch.save(inputs, base / "inputs.pt")
    args = [base / "mini-sd", folder, base / "inputs.pt", base / "out.pt"]
    interop.run_without_course(CONTROL_SIDE, *args)
    return pipe, control, torch.load(base / "out.pt")


def controlled_images(pipe, control, scale):
    return pipe(
        PROMPTS,
        num_steps=STEPS,
        seed=SEED,
        guidance_scale=GUIDANCE,
        control=control,
        control_scale=scale,
    )


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_the_controlnet_runs_in_diffusers_controlnet_pipeline(controlled, scale):
    pipe, control, theirs = controlled
    assert theirs["class"] == "ControlNetModel"
    ours = controlled_images(pipe, control, scale)
    diff = (ours - theirs[scale]).abs().max().item()
    print(f"ControlNet (scale {scale}): max |course - diffusers| = {diff:.2e}")
    assert diff <= TOLERANCE
    plain = pipe(PROMPTS, num_steps=STEPS, seed=SEED, guidance_scale=GUIDANCE)
    assert (plain - ours).abs().max().item() > 100 * TOLERANCE  # control matters


def test_a_dropped_middle_residual_is_caught(controlled):
    pipe, control, theirs = controlled
    hook = pipe.controlnet.mid_zero.register_forward_hook(
        lambda m, a, out: torch.zeros_like(out)
    )
    try:
        wrong = controlled_images(pipe, control, 1.0)
    finally:
        hook.remove()
    assert (wrong - theirs[1.0]).abs().max().item() > 100 * TOLERANCE


def test_the_first_hint_encoder_is_refused():
    from diffusion_lib.controlnet import ControlNet

    pipe = tiny_sd_pipeline()
    pipe.controlnet = ControlNet(pipe.unet)
    with pytest.raises(ValueError, match="hint_widths"):
        interop.diffusers_controlnet(pipe)


# -------------------------------------------------------------------- inpainting

INPAINT_SIDE = """
import torch
from diffusers import StableDiffusionInpaintPipeline

folder, inputs, out = sys.argv[1:4]
x = torch.load(inputs)
pipe = StableDiffusionInpaintPipeline.from_pretrained(folder, local_files_only=True)
pipe.set_progress_bar_config(disable=True)
images = pipe(x["prompts"], image=(x["images"] + 1) / 2, mask_image=x["mask"],
    num_inference_steps=x["steps"], guidance_scale=x["guidance"],
    generator=torch.Generator().manual_seed(x["seed"]), output_type="pt").images
torch.save({"images": images * 2 - 1, "in_channels": pipe.unet.config.in_channels}, out)
"""


@pytest.fixture(scope="module")
def inpainted(tmp_path_factory):
    """A tiny SD's inpainting UNet in SD's channel order (random weights, the new
    input channels too), exported as a StableDiffusionInpaintPipeline folder and run
    by diffusers on masks that do not follow the 8x8 latent grid."""
    from diffusion_lib.editing import InpaintingUNet

    pipe = tiny_sd_pipeline(seed=3)
    model = InpaintingUNet.from_text_to_image(pipe.unet, sd_order=True)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        model.unet.conv_in.weight.normal_(0, 0.15, generator=gen)
    base = tmp_path_factory.mktemp("sd_inpaint")
    folder = interop.export_inpaint(pipe, model.eval(), base / "inpaint")
    mask = torch.zeros(2, 1, 64, 64)
    mask[0, :, 5:37, 11:50] = 1
    mask[1, :, 30:61, 2:29] = 1
    inputs = {
        "prompts": PROMPTS,
        "images": torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1,
        "mask": mask,
        "steps": STEPS,
        "guidance": GUIDANCE,
        "seed": SEED,
    }
    torch.save(inputs, base / "inputs.pt")
    interop.run_without_course(
        INPAINT_SIDE, folder, base / "inputs.pt", base / "out.pt"
    )
    return pipe, model, inputs, torch.load(base / "out.pt")


def course_inpaint(pipe, model, x):
    from diffusion_lib.editing import inpaint

    return inpaint(
        pipe,
        model,
        x["images"],
        x["mask"],
        x["prompts"],
        num_steps=x["steps"],
        guidance_scale=x["guidance"],
        seed=x["seed"],
    )


def test_the_inpainting_unet_runs_in_diffusers_inpaint_pipeline(inpainted):
    pipe, model, x, theirs = inpainted
    assert theirs["in_channels"] == 9
    diff = (course_inpaint(pipe, model, x) - theirs["images"]).abs().max().item()
    print(f"inpainting: max |course - diffusers| = {diff:.2e}")
    assert diff <= TOLERANCE


def test_the_course_first_channel_order_is_caught(inpainted):
    """The same weights fed [x_t, masked latent, mask] (the course's first order)
    disagree with SD's pipeline; and export refuses such a model."""
    from diffusion_lib.editing import InpaintingUNet

    pipe, model, x, theirs = inpainted
    swapped = InpaintingUNet(model.unet, sd_order=False)
    wrong = course_inpaint(pipe, swapped, x)
    assert (wrong - theirs["images"]).abs().max().item() > 100 * TOLERANCE
    with pytest.raises(ValueError, match="sd_order=True"):
        interop.export_inpaint(pipe, swapped, "/nonexistent")


# ------------------------------------------------------------ the command line


def test_export_and_import_commands_round_trip(exported, tmp_path, capsys):
    """import (diffusers folder -> course checkpoints), export (checkpoints ->
    diffusers folder), import again: the same weights, and `generate` runs on them."""
    from safetensors.torch import load_file

    from diffusion_lib.__main__ import main

    pipe, folder, _, _ = exported
    main(["import", str(folder), "--out", str(tmp_path / "ckpt")])
    export = ["export", "--out", str(tmp_path / "again")]
    export += ["--checkpoints", str(tmp_path / "ckpt")]
    main(export)
    for part in ("unet", "vae", "text_encoder"):
        a = load_file(next((folder / part).glob("*.safetensors")))
        b = load_file(next((tmp_path / "again" / part).glob("*.safetensors")))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), part
    with pytest.raises(SystemExit):  # refuses to overwrite
        main(export)
    assert "exists and is not empty" in capsys.readouterr().err
    main(
        [
            "generate",
            PROMPTS[0],
            "--checkpoints",
            str(tmp_path / "ckpt"),
            "--num-images",
            "2",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "g.png"),
        ]
    )
    assert (tmp_path / "g.png").exists()


def test_export_explains_a_model_in_the_first_layout(tiny_sd_dir, tmp_path, capsys):
    """The tiny test SD has the course's first layout (as the shipped mini SD until
    it is retrained in SD's): export says what to retrain instead of writing a
    folder that diffusers would misread."""
    from diffusion_lib.__main__ import main

    with pytest.raises(SystemExit) as exit:
        main(
            ["export", "--out", str(tmp_path / "x"), "--checkpoints", str(tiny_sd_dir)]
        )
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "first layout" in err and "retrain" in err


def test_the_whole_clip_is_transformers_clipmodel_both_ways():
    """The shipped CLIP (both towers) as transformers' CLIPModel: the same text and
    image embeddings (the image tower's patch bias folded into its position
    embeddings), and back into the course's CLIP with the same outputs."""
    from transformers import CLIPConfig as HFCLIPConfig
    from transformers import CLIPModel

    from diffusion_lib import convert, pretrained
    from diffusion_lib.clip import CLIP, tokenizer_from_manifest

    clip, info = pretrained.load_pretrained("scenes-clip")
    cfg, tokenizer = clip.config, tokenizer_from_manifest(info)
    theirs = CLIPModel(
        HFCLIPConfig(
            text_config=convert.clip_text_config(cfg),
            vision_config=convert.clip_vision_config(cfg),
            projection_dim=cfg.embed_dim,
        )
    ).eval()
    state = convert.clip_to_hf_state(clip.state_dict(), cfg)
    reference = {
        k: v for k, v in theirs.state_dict().items() if not k.endswith("position_ids")
    }
    convert.check_same_keys(state, reference, "CLIP")
    theirs.load_state_dict(state, strict=False)
    tokens = tokenizer(PROMPTS)
    ids = convert.hf_token_order(tokenizer.vocab_size).argsort()[tokens]
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    images = images * 2 - 1
    with torch.no_grad():
        text = theirs.get_text_features(input_ids=ids)
        image = theirs.get_image_features(pixel_values=images)
        text = getattr(text, "pooler_output", text)
        image = getattr(image, "pooler_output", image)
        text_diff = (F.normalize(text, dim=-1) - clip.encode_text(tokens)).abs().max()
        image_diff = (F.normalize(image, dim=-1) - clip.encode_image(images)).abs()
        back = CLIP(cfg)
        back.load_state_dict(convert.clip_from_hf_state(theirs.state_dict(), cfg))
        back_diff = (back.eval().encode_image(images) - clip.encode_image(images)).abs()
    print(
        f"text {text_diff:.1e}, image {image_diff.max():.1e}, "
        f"back {back_diff.max():.1e}"
    )
    assert text_diff <= 1e-5 and image_diff.max() <= 1e-5 and back_diff.max() <= 1e-5
    # a wrong token order (the course's ids as they are) pools the wrong token
    with torch.no_grad():
        wrong = theirs.get_text_features(input_ids=tokens)
    wrong = getattr(wrong, "pooler_output", wrong)
    assert (F.normalize(wrong, dim=-1) - clip.encode_text(tokens)).abs().max() > 0.01


def test_diffusers_own_schedulers_sample_the_exported_folder(exported):
    """sd_scheduler_images: the folder's DDIM in diffusers alone gives the course's
    images (as the pipeline check does), and DPM-Solver++ builds from its configuration
    and samples the same prompts; a bad setting is refused before anything runs."""
    pipe, folder, inputs, _ = exported
    out = interop.sd_scheduler_images(
        folder,
        PROMPTS,
        {"DDIM 10": ("ddim", 10), "DPM-Solver++ 5": ("dpm", 5)},
        guidance=GUIDANCE,
        seed=SEED,
    )
    assert out["DPM-Solver++ 5"]["scheduler"] == "DPMSolverMultistepScheduler"
    ours = pipe(PROMPTS, num_steps=10, seed=SEED, guidance_scale=GUIDANCE)
    assert (out["DDIM 10"]["images"] - ours).abs().max() <= 1e-3
    dpm = out["DPM-Solver++ 5"]["images"]
    assert dpm.shape == ours.shape and 0 < (dpm - ours).abs().max() < 2
    with pytest.raises(ValueError, match="expected"):
        interop.sd_scheduler_images(folder, PROMPTS, {"x": ("euler", 5)}, GUIDANCE)

import pytest
import torch

from diffusion_lib.schedules import NoiseSchedule


@pytest.fixture(params=["linear", "cosine"])
def schedule(request):
    return NoiseSchedule.make(request.param, 1000)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def make_tiny_text_unet(context_dim: int = 8, seed: int = 0):
    """A tiny text-conditioned UNet on 4-channel latents (two levels, attention at the
    second), its output layer randomised so outputs depend on the inputs."""
    from diffusion_lib.unet import UNet, UNetConfig

    torch.manual_seed(seed)
    unet = UNet(
        UNetConfig(
            in_channels=4,
            out_channels=4,
            base_channels=8,
            channel_mults=(1, 2),
            attention_levels=(1,),
            heads=2,
            groups=4,
            context_dim=context_dim,
        )
    )
    for p in unet.conv_out.parameters():  # not the zero init
        torch.nn.init.normal_(p, std=0.1)
    return unet


@pytest.fixture
def tiny_text_unet():
    """Factory for fresh tiny text-conditioned UNets (see make_tiny_text_unet)."""
    return make_tiny_text_unet


def write_tiny_sd(directory, seed: int = 0) -> None:
    """Tiny untrained scenes-vae / scenes-clip / scenes-ldm checkpoints (with the
    manifests the loaders read) in `directory`: the mini Stable Diffusion's plumbing,
    tested without the shipped weights."""
    from diffusion_lib.clip import CLIP, CLIPConfig, scene_tokenizer
    from diffusion_lib.train import save_checkpoint
    from diffusion_lib.unet import UNet, UNetConfig
    from diffusion_lib.vae import AutoencoderKL, VAEConfig

    torch.manual_seed(seed)
    tok = scene_tokenizer()
    clip_cfg = CLIPConfig(
        vocab_size=tok.vocab_size,
        text_width=16,
        text_layers=1,
        text_heads=2,
        vision_width=16,
        vision_layers=1,
        vision_heads=2,
        embed_dim=8,
    )
    vae_cfg = VAEConfig(channels=(8, 8, 8, 8), groups=4, scaling_factor=0.5)
    unet_cfg = UNetConfig(
        in_channels=4,
        out_channels=4,
        base_channels=8,
        channel_mults=(1, 2),
        attention_levels=(1,),
        heads=2,
        groups=4,
        context_dim=16,
    )
    unet = UNet(unet_cfg)
    for p in unet.conv_out.parameters():  # not the zero init: outputs depend on inputs
        torch.nn.init.normal_(p, std=0.02)
    models = {
        "scenes-vae": (AutoencoderKL(vae_cfg), {"config": vae_cfg.to_dict()}),
        "scenes-clip": (
            CLIP(clip_cfg),
            {"config": clip_cfg.to_dict(), "tokenizer": tok.to_dict()},
        ),
        "scenes-ldm": (
            unet,
            {
                "config": unet_cfg.to_dict(),
                "schedule": {"kind": "scaled_linear", "num_timesteps": 1000},
                "prediction_type": "eps",
                "guidance_scale": 3.0,
            },
        ),
    }
    for name, (model, manifest) in models.items():
        path = f"{directory}/{name}.safetensors"
        save_checkpoint(path, model, {"recipe": name, **manifest}, torch.float32)
    write_tiny_dalle2(directory, clip_cfg)


def write_tiny_dalle2(directory, clip_cfg) -> None:
    """Tiny untrained scenes-prior / scenes-decoder / scenes-upsampler beside the tiny
    scenes-clip: the mini DALL-E 2's plumbing, without the shipped weights."""
    from diffusion_lib.checkpoints import read_manifest
    from diffusion_lib.prior import DiffusionPrior, PriorConfig
    from diffusion_lib.train import save_checkpoint
    from diffusion_lib.unclip import DecoderConfig, UnCLIPDecoder, UnCLIPUpsampler
    from diffusion_lib.unet import UNetConfig

    clip_sha = read_manifest(f"{directory}/scenes-clip.json")["sha256"]
    prior_cfg = PriorConfig(
        embed_dim=clip_cfg.embed_dim,
        text_width=clip_cfg.text_width,
        width=16,
        layers=1,
        heads=2,
    )
    dec_cfg = DecoderConfig(
        unet=UNetConfig(
            base_channels=8,
            channel_mults=(1, 2),
            attention_levels=(1,),
            heads=2,
            groups=4,
            context_dim=8,
        ),
        embed_dim=clip_cfg.embed_dim,
        image_size=32,
    )
    up_cfg = UNetConfig(
        in_channels=6,
        base_channels=8,
        channel_mults=(1, 2),
        groups=4,
        attention_levels=(),
        mid_attention=False,
    )
    cosine = {"schedule": {"kind": "cosine", "num_timesteps": 1000}}
    models = {
        "scenes-prior": (
            DiffusionPrior(prior_cfg),
            {
                "config": prior_cfg.to_dict(),
                "clip_sha256": clip_sha,
                "guidance_scale": 2.0,
            },
        ),
        "scenes-decoder": (
            UnCLIPDecoder(dec_cfg),
            {
                "config": dec_cfg.to_dict(),
                "clip_sha256": clip_sha,
                "guidance_scale": 3.0,
            },
        ),
        "scenes-upsampler": (
            UnCLIPUpsampler(up_cfg),
            {"config": up_cfg.to_dict(), "sampling_steps": 2},
        ),
    }
    for name, (model, manifest) in models.items():
        path = f"{directory}/{name}.safetensors"
        save_checkpoint(
            path, model, {"recipe": name, **cosine, **manifest}, torch.float32
        )


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_sd")
    write_tiny_sd(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_part4_dir(tmp_path_factory, tiny_sd_dir):
    """The tiny mini SD plus Part IV's adapters and models from their quick recipes
    (LoRA, textual inversion, inpainting UNet, ControlNet)."""
    import shutil

    from diffusion_lib.recipes import PART_IV, RECIPES

    directory = tmp_path_factory.mktemp("tiny_part4")
    for f in tiny_sd_dir.iterdir():
        shutil.copy(f, directory)
    # no torch.manual_seed here: the LoRA recipe draws its A matrices from a seed of
    # its own (seed stream "adapter init"), whatever ran before in this process
    for name in PART_IV:
        RECIPES[name].run(directory, quick=True)
    return directory


@pytest.fixture
def outside(tmp_path):
    """A folder outside /tmp (the sandbox gives every run a fresh, empty /tmp, which
    would hide a class under /tmp whatever the grader's `hide` list says): the tests
    of what a notebook can see use this one."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    base = "/var/tmp" if os.access("/var/tmp", os.W_OK) else None
    folder = Path(tempfile.mkdtemp(prefix="diffusion-grading-test-", dir=base))
    if str(folder).startswith("/tmp/"):
        pytest.fail("no writable folder outside /tmp for the grading tests")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)

"""diffusion_lib.config: every model config survives a JSON round trip (tuples and
nested configs restored by type hints), and an unknown key is named."""

import json

import pytest
import torch

from diffusion_lib import pretrained
from diffusion_lib.unclip import DecoderConfig
from diffusion_lib.unet import UNetConfig


def only_stored(values, stored):
    if not isinstance(stored, dict):
        return values
    return {k: only_stored(values[k], v) for k, v in stored.items()}


@pytest.mark.parametrize("name", sorted(pretrained.BUILDERS))
def test_every_shipped_config_round_trips_through_json(name):
    cls = pretrained.BUILDERS[name].config_class
    stored = pretrained.manifest(name)["config"]
    config = cls.from_dict(stored)
    again = json.loads(json.dumps(config.to_dict()))
    # the same values (fields added since the checkpoint was written take defaults,
    # in nested configs too)
    assert only_stored(again, stored) == stored
    assert cls.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_tuples_and_nested_configs_come_back_as_such():
    cfg = DecoderConfig(unet=UNetConfig(channel_mults=(1, 2), context_dim=8))
    back = DecoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    assert isinstance(back.unet, UNetConfig) and back.unet.channel_mults == (1, 2)
    assert back.unet.context_dim == 8 and back.unet.vector_dim is None


def test_an_unknown_key_is_named_with_the_known_ones():
    with pytest.raises(ValueError, match=r"no field 'widht'.*base_channels"):
        UNetConfig.from_dict({"widht": 3})


TRAIN_CONFIGS = {  # the training config class of each shipped recipe's manifest
    "scenes-clip": "train_parts.CLIPTrainConfig",
    "scenes-vae": "train_parts.VAETrainConfig",
    "scenes-upsampler": "train.UpsamplerTrainConfig",
    **{
        name: "train.TrainConfig"
        for name in (
            "shapes-ddpm",
            "scenes-ldm",
            "scenes-prior",
            "scenes-decoder",
            "scenes-lora",
            "scenes-inversion",
            "scenes-inpaint",
            "scenes-controlnet",
        )
    },
}


@pytest.mark.parametrize("name", sorted(TRAIN_CONFIGS))
def test_every_shipped_training_config_reads_back_into_its_class(name):
    """The training configs share one optimiser config (train.OptimConfig) and the
    Config base: each shipped manifest's "train" record reads back into its class (a
    field added since takes its default: the VAE's weight decay, 0 as it was)."""
    import importlib

    from diffusion_lib.train import OptimConfig

    module, cls_name = TRAIN_CONFIGS[name].split(".")
    cls = getattr(importlib.import_module(f"diffusion_lib.{module}"), cls_name)
    assert issubclass(cls, OptimConfig)
    stored = pretrained.manifest(name)["train"]
    config = cls.from_dict(stored)
    again = json.loads(json.dumps(config.to_dict()))  # tuples back as JSON lists
    assert {k: again[k] for k in stored} == stored
    optimizer = config.optimizer([torch.zeros(1, requires_grad=True)])
    assert optimizer.defaults["lr"] == stored["lr"]

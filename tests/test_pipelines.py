import pytest
import torch

from diffusion_lib.data import LABEL_SIZES
from diffusion_lib.pipelines import generate_from_captions, generate_shapes
from diffusion_lib.schedules import NoiseSchedule
from diffusion_lib.unet import UNet, UNetConfig


def test_caption_pipeline_is_seeded_and_validates_captions():
    model = UNet(UNetConfig(base_channels=16, channel_mults=(1, 2), attention_levels=(1,), label_sizes=LABEL_SIZES)).eval()
    s = NoiseSchedule.make("cosine", 100)
    caps = ["a large red circle in the top left", "bottom right: a small cyan triangle"]
    a = generate_from_captions(model, s, caps, num_steps=3, seed=1)
    assert a.shape == (2, 3, 16, 16) and a.abs().max() <= 1.0 + 1e-5
    torch.testing.assert_close(a, generate_from_captions(model, s, caps, num_steps=3, seed=1))
    b = generate_shapes(model, s, torch.tensor([[0, 0, 1, 0]] * 3), num_steps=2, batch_size=2)
    assert b.shape == (3, 3, 16, 16)
    with pytest.raises(ValueError, match="exactly one shape"):
        generate_from_captions(model, s, ["a red thing"], num_steps=2)

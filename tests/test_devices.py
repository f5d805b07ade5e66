"""Device placement for gpu mode, checked without a GPU: a module on PyTorch's `meta`
device refuses CPU inputs exactly as a CUDA module does ("Tensor on device meta is not
on the expected device cpu!"), so a library function that forgets to move its inputs to
the model fails here as it would on Colab."""

from types import SimpleNamespace

import pytest
import torch

from diffusion_lib import clip, data, editing, pipelines, vae

META = torch.device("meta")


def _vae():
    return vae.AutoencoderKL(vae.VAEConfig(channels=(8, 16, 16, 16), groups=4))


class _TextOn:
    """A text encoder on `device` that checks where its tokens arrive."""

    def __init__(self, device):
        self.device, self.seen = device, []

    def text_states(self, tokens):
        self.seen.append(tokens.device)
        return torch.zeros(len(tokens), tokens.shape[1], 8, device=self.device)


def test_a_meta_module_refuses_cpu_inputs_as_a_cuda_one_would():
    with pytest.raises(RuntimeError, match="not on the expected device"):
        _vae().to(META).encode_scaled(torch.zeros(1, 3, 64, 64))


def test_encode_scenes_encodes_where_the_models_are():
    scenes = data.make_scenes(5, 64, seed=0, split="train")  # on the CPU, as built
    text = _TextOn(META)
    latents, states = pipelines.encode_scenes(
        _vae().to(META), text, clip.scene_tokenizer(), scenes, batch_size=2
    )
    assert latents.device == META and latents.shape == (5, 4, 8, 8)
    assert states.device == META and text.seen == [META] * 3  # 3 batches of <= 2


def test_inpaint_condition_encodes_in_batches_where_the_vae_is():
    scenes = data.make_scenes(5, 64, seed=1, split="train")
    mask = editing.training_masks(scenes)
    torch.manual_seed(0)
    model = _vae().eval()
    cpu = SimpleNamespace(device=torch.device("cpu"), vae=model)
    whole = editing.inpaint_condition(cpu, scenes.images, mask, batch_size=5)
    parts = editing.inpaint_condition(cpu, scenes.images, mask, batch_size=2)
    assert whole.shape == (5, 5, 8, 8)
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-6)
    meta = SimpleNamespace(device=META, vae=model.to(META))
    assert editing.inpaint_condition(meta, scenes.images, mask).device == META

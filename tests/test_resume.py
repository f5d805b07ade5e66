"""Training that survives an interruption (diffusion_lib.resume): a run stopped
part-way and started again ends with exactly the weights, EMA, losses and callback
records of a run that was never stopped; a saved state from another run is refused;
the files go when the run ends."""

import pytest
import torch

from diffusion_lib.resume import progress_files, resumable
from diffusion_lib.schedules import NoiseSchedule
from diffusion_lib.train import TrainConfig, train_diffusion
from diffusion_lib.train_parts import VAETrainConfig, train_vae
from diffusion_lib.unet import UNet, UNetConfig
from diffusion_lib.vae import AutoencoderKL, VAEConfig

STEPS = 7


class Stop(Exception):
    """The interruption (a closed laptop)."""


def diffusion_run(stop_at=None):
    torch.manual_seed(0)
    images = torch.rand(32, 3, 8, 8) * 2 - 1
    model = UNet(
        UNetConfig(
            base_channels=8,
            channel_mults=(1, 2),
            attention_levels=(1,),
            label_sizes=(2,),
            dropout=0.1,  # draws from torch's global generator: it must be restored
        )
    )

    def callback(step, ema_model):
        if step == stop_at:
            raise Stop
        return float(ema_model.conv_in.weight.sum())

    cfg = TrainConfig(steps=STEPS, batch_size=8, lr=1e-3, warmup=2, ema_decay=0.9)
    return train_diffusion(
        model,
        NoiseSchedule.make("cosine", 100),
        images,
        torch.randint(0, 2, (32, 1)),
        cfg,
        progress=False,
        callback=callback,
        callback_every=1,
    ), model


def vae_run(stop_at=None):
    torch.manual_seed(0)
    model = AutoencoderKL(VAEConfig(channels=(8, 8), groups=4, sd_layout=True))

    def callback(step, ema_model):
        if step == stop_at:
            raise Stop
        return step

    cfg = VAETrainConfig(steps=STEPS, batch_size=4, lr=1e-3, warmup=2)
    images = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    result = train_vae(
        model, images * 2 - 1, cfg, progress=False, callback=callback, callback_every=1
    )
    return result, model


def same(a, b) -> bool:
    a, b = a.state_dict(), b.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("run", [diffusion_run, vae_run], ids=["fit", "vae"])
def test_an_interrupted_run_continues_to_the_same_weights(run, tmp_path):
    whole, whole_model = run()
    with pytest.raises(Stop), resumable(tmp_path, "demo", every=2):
        run(stop_at=5)  # saved after steps 2 and 4; stopped at 5
    assert [p.name for p in progress_files(tmp_path, "demo")] == ["demo.progress-0.pt"]
    with resumable(tmp_path, "demo", every=2):
        again, again_model = run()
    assert same(again.ema.model, whole.ema.model)
    assert same(again_model, whole_model)
    assert again.losses == whole.losses and len(again.losses) == STEPS
    assert again.records == whole.records and again.records
    assert again.seconds > 0
    assert not progress_files(tmp_path, "demo")  # removed at the end


def test_a_state_from_another_run_is_refused(tmp_path):
    with pytest.raises(Stop), resumable(tmp_path, "demo", every=2, key={"seed": 0}):
        diffusion_run(stop_at=3)
    with pytest.raises(ValueError, match="saved by another run"):
        with resumable(tmp_path, "demo", every=2, key={"seed": 1}):
            diffusion_run()


def test_outside_a_resumable_block_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    diffusion_run()
    assert not list(tmp_path.iterdir())

import json
import re

import pytest
import torch

from diffusion_lib.checkpoints import load_checkpoint
from diffusion_lib.schedules import NoiseSchedule
from diffusion_lib.train import (
    EMA,
    TrainConfig,
    check_training_inputs,
    drop_labels,
    lr_at,
    save_checkpoint,
    train_diffusion,
)
from diffusion_lib.unet import UNet, UNetConfig


def test_ema_follows_weights():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(200):
        ema.update(model)
    torch.testing.assert_close(ema.model.weight, model.weight, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.0)


def test_lr_schedule():
    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(10, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(100, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(5, 100, 1.0, 10, "constant") == pytest.approx(0.6)
    assert lr_at(100, 100, 1.0, 10, "constant") == lr_at(99, 1000, 1.0, 10, "constant")
    with pytest.raises(ValueError, match="unknown lr schedule 'linear'"):
        lr_at(0, 100, 1.0, 10, "linear")
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        TrainConfig(lr_schedule="cosin")


def _ema_at(steps, schedule, at=3):
    """The EMA weights after `at` steps of a run of `steps` steps."""
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=8, channel_mults=(1, 2), attention_levels=()))
    seen = {}

    def keep(step, ema_model):
        if step == at:
            seen["w"] = torch.cat([p.flatten() for p in ema_model.parameters()])

    cfg = TrainConfig(steps=steps, batch_size=4, warmup=1, lr_schedule=schedule)
    images = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    train_diffusion(
        model,
        NoiseSchedule.make("cosine", 100),
        images * 2 - 1,
        None,
        cfg,
        progress=False,
        callback=keep,
        callback_every=1,
    )
    return seen["w"]


def test_checkpoints_along_a_constant_rate_run_are_shorter_runs():
    """What makes chapter 10's budgets along one run comparable: with the constant
    schedule, the EMA after 3 steps of a 9-step run is exactly a 3-step run's; with
    the cosine one, whose rate depends on the run's length, it is not."""
    assert torch.equal(_ema_at(3, "constant"), _ema_at(9, "constant"))
    assert not torch.equal(_ema_at(3, "cosine"), _ema_at(9, "cosine"))


def test_drop_labels():
    labels, null = torch.zeros(10000, 2, dtype=torch.long), torch.tensor([3, 6])
    out = drop_labels(labels, null, 0.25, torch.Generator().manual_seed(0))
    dropped = (out == null).all(dim=1).float().mean().item()
    assert dropped == pytest.approx(0.25, abs=0.02)
    assert ((out == 0).all(1) | (out == null).all(1)).all()  # rows dropped whole


def test_training_reduces_the_loss():
    torch.manual_seed(0)
    images = torch.zeros(64, 3, 8, 8)
    images[:, 0, 2:6, 2:6] = 1.0  # one fixed red square
    model = UNet(
        UNetConfig(
            base_channels=16,
            channel_mults=(1, 2),
            attention_levels=(1,),
            label_sizes=(2,),
        )
    )
    cfg = TrainConfig(steps=150, batch_size=16, lr=2e-3, warmup=10)
    result = train_diffusion(
        model,
        NoiseSchedule.make("cosine", 100),
        images,
        torch.zeros(64, 1, dtype=torch.long),
        cfg,
        progress=False,
    )
    assert len(result.losses) == 150 and result.seconds > 0
    first, last = sum(result.losses[:20]) / 20, sum(result.losses[-20:]) / 20
    assert last < 0.6 * first


def test_checkpoint_round_trip_and_corruption(tmp_path):
    model = UNet(UNetConfig(base_channels=16, channel_mults=(1,), attention_levels=()))
    info = save_checkpoint(
        tmp_path / "m.safetensors",
        model,
        {"recipe": "test", "config": model.config.to_dict()},
    )
    assert info["sha256"] == json.loads((tmp_path / "m.json").read_text())["sha256"]
    state, manifest = load_checkpoint(tmp_path / "m.safetensors")
    assert manifest["recipe"] == "test" and all(
        v.dtype == torch.float32 for v in state.values()
    )
    for k, v in model.state_dict().items():
        torch.testing.assert_close(state[k], v.half().float())
    raw = bytearray((tmp_path / "m.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (tmp_path / "m.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(tmp_path / "m.safetensors")
    with pytest.raises(FileNotFoundError, match="missing"):
        load_checkpoint(tmp_path / "absent.safetensors")
    with pytest.raises(ValueError, match=".safetensors"):
        save_checkpoint(tmp_path / "m.pt", model, {})


def test_bad_manifests_and_missing_files_say_how_to_rebuild(tmp_path):
    model = UNet(UNetConfig(base_channels=16, channel_mults=(1,), attention_levels=()))
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, {"recipe": "shapes-ddpm"})
    manifest = path.with_suffix(".json")
    rebuild = re.escape("`python -m diffusion_lib.recipes shapes-ddpm`")
    info = json.loads(manifest.read_text())
    del info["sha256"]
    manifest.write_text(json.dumps(info))
    with pytest.raises(ValueError, match=f"has no sha256.*{rebuild}"):
        load_checkpoint(path, recipe="shapes-ddpm")
    manifest.write_text('{"sha256": "abc", ')
    with pytest.raises(ValueError, match=f"not valid JSON.*{rebuild}"):
        load_checkpoint(path, recipe="shapes-ddpm")
    manifest.unlink()
    with pytest.raises(FileNotFoundError, match=f"manifest .* is missing.*{rebuild}"):
        load_checkpoint(path, recipe="shapes-ddpm")
    with pytest.raises(FileNotFoundError, match=rebuild):
        load_checkpoint(tmp_path / "absent.safetensors", recipe="shapes-ddpm")


def test_conditions_with_their_own_probability_drop_on_rows_of_their_own():
    """unCLIP's decoder: the image embedding dropped 10% of the time, the caption
    (its embedding, states and mask together) 50%, independently."""
    from diffusion_lib.train import draw_batch

    n = 4000
    images = torch.zeros(n, 1, 2, 2)
    ones = torch.ones(n, 3)
    conditions = {
        "image_embed": (ones, torch.zeros(3)),
        "text_embed": (ones, torch.zeros(3), 0.5),
        "text_states": (torch.ones(n, 2, 3), torch.zeros(2, 3), 0.5),
    }
    cfg = TrainConfig(batch_size=n, p_uncond=0.1)
    _, kw = draw_batch(
        None, images, None, cfg, torch.Generator().manual_seed(0), conditions=conditions
    )
    image_dropped = (kw["image_embed"] == 0).all(1)
    text_dropped = (kw["text_embed"] == 0).all(1)
    assert image_dropped.float().mean().item() == pytest.approx(0.1, abs=0.02)
    assert text_dropped.float().mean().item() == pytest.approx(0.5, abs=0.03)
    assert torch.equal(text_dropped, (kw["text_states"] == 0).flatten(1).all(1))
    both = (image_dropped & text_dropped).float().mean().item()
    assert both == pytest.approx(0.05, abs=0.015)  # independent: 0.1 * 0.5
    with pytest.raises(ValueError, match="with p a probability"):
        check_training_inputs(images, None, None, {"a": (ones, torch.zeros(3), 2.0)})

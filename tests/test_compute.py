"""Training compute (diffusion_lib.compute): the FLOPs counted for a training step are
the textbook counts (2 per multiply-add; a backward pass that computes weight
gradients only costs what the forward does), the fused CPU attention kernel is counted
(PyTorch alone counts it as 0), a loop records its FLOPs once however it is resumed,
and a sweep's throw-away models stay out of the checkpoint's count."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from diffusion_lib import compute
from diffusion_lib.resume import resumable
from diffusion_lib.schedules import NoiseSchedule
from diffusion_lib.train import TrainConfig, train_diffusion
from diffusion_lib.unet import UNet, UNetConfig


def counted_step(fn, loop="test", steps=1):
    counter = compute.StepCounter(loop, steps)
    counter.count(fn, [])
    return counter.record


def test_a_linear_layer_and_a_convolution_count_as_the_textbook_says():
    B, i, o = 16, 32, 8
    layer = torch.nn.Linear(i, o)
    x = torch.randn(B, i)  # the input needs no gradient: the backward is dW only
    record = counted_step(lambda: layer(x).sum().backward())
    assert record.flops_per_step == 2 * B * i * o + 2 * B * i * o
    x.requires_grad_(True)  # now dx too
    record = counted_step(lambda: layer(x).sum().backward())
    assert record.flops_per_step == 3 * 2 * B * i * o

    conv = torch.nn.Conv2d(3, 5, 3, padding=1)
    img = torch.randn(2, 3, 8, 8)
    forward = 2 * 2 * 5 * 8 * 8 * 3 * 3 * 3  # B, Cout, H, W, Cin, k, k
    record = counted_step(lambda: conv(img).sum().backward())
    assert record.flops_per_step == 2 * forward


def test_the_fused_cpu_attention_is_counted_like_the_reference_kernel():
    """PyTorch's counter knows the GPU kernels only; without compute's formula the CPU
    kernel counts 0. The fused backward recomputes the scores (one q k^T more than the
    reference kernel's backward, which keeps them)."""
    b, h, n, L, d = 2, 3, 16, 16, 8
    q = torch.randn(b, h, n, d, requires_grad=True)
    k = torch.randn(b, h, L, d, requires_grad=True)
    v = torch.randn(b, h, L, d, requires_grad=True)

    def step():
        F.scaled_dot_product_attention(q, k, v).sum().backward()

    fused = counted_step(step).flops_per_step
    with sdpa_kernel(SDPBackend.MATH):
        reference = counted_step(step).flops_per_step
    scores = 2 * b * h * n * L * d
    assert reference == 2 * scores + 4 * scores  # forward: q k^T, p v; backward: 4
    assert fused == reference + scores
    with FlopCounterMode(display=False) as only_forward, torch.no_grad():
        F.scaled_dot_product_attention(q, k, v)
    assert only_forward.get_total_flops() == 2 * scores


def tiny_run(steps=5, lr_schedule="cosine", **kwargs):
    torch.manual_seed(0)
    model = UNet(
        UNetConfig(base_channels=8, channel_mults=(1, 2), attention_levels=(1,))
    )
    cfg = TrainConfig(steps=steps, batch_size=4, warmup=1, lr_schedule=lr_schedule)
    return train_diffusion(
        model,
        NoiseSchedule.make("cosine", 100),
        torch.rand(16, 3, 8, 8) * 2 - 1,
        None,
        cfg,
        progress=False,
        **kwargs,
    )


def test_a_training_loop_records_its_steps_and_a_sweep_stays_aside():
    with compute.tally() as loops:
        result = tiny_run()
        with compute.aside():
            tiny_run()  # a sweep's model: not the checkpoint's training
    (record,) = loops
    assert record.steps == 5 and record.flops_per_step == result.flops_per_step > 0
    assert compute.summary(loops)["flops"] == 5 * record.flops_per_step
    with compute.only_count(), pytest.raises(compute.CountedOnly) as counted:
        tiny_run(steps=1000)  # stops after its first step
    assert counted.value.record.flops_per_step == record.flops_per_step
    assert counted.value.record.steps == 1000


def test_a_resumed_loop_counts_the_same_step(tmp_path):
    class Stop(Exception):
        pass

    def stop_at_3(step, ema_model):
        if step == 3:
            raise Stop

    with resumable(tmp_path, "run", every=1):
        with pytest.raises(Stop):
            tiny_run(callback=stop_at_3, callback_every=1)
    with resumable(tmp_path, "run", every=1), compute.tally() as loops:
        resumed = tiny_run()
    assert loops[0].steps == 5
    assert resumed.flops_per_step == tiny_run().flops_per_step


def test_flops_are_written_for_people():
    assert compute.format_flops(1.234e15) == "1.23 PFLOP"
    assert compute.format_flops(5e9) == "5 GFLOP"
    assert compute.format_flops(12.0) == "12 FLOP"


def test_a_constant_rate_run_leaves_a_model_per_budget(tmp_path):
    """budget_snapshots saves the EMA at the budget steps, each the model a run of
    that length gives; it refuses a cosine run, whose snapshots would not be."""
    from dataclasses import asdict

    from diffusion_lib import pretrained
    from diffusion_lib.recipes.base import budget_snapshots

    cfg = TrainConfig(steps=4, batch_size=4, warmup=1, lr_schedule="constant")
    fields = {"recipe": "scenes-ldm", "train": asdict(cfg)}
    save, every = budget_snapshots("scenes-ldm", tmp_path, (2, 4), fields)
    assert every == 2
    tiny_run(steps=4, lr_schedule="constant", callback=save, callback_every=every)
    files = sorted(p.name for p in (tmp_path / "budgets").glob("*.safetensors"))
    assert files == ["scenes-ldm-2.safetensors", "scenes-ldm-4.safetensors"]
    path = pretrained.checkpoint_path("scenes-ldm", tmp_path, step=2)
    two = pretrained.read_manifest(path.with_suffix(".json"))
    assert two["budget_step"] == 2 and two["train"]["steps"] == 4
    cosine = {"recipe": "scenes-ldm", "train": asdict(TrainConfig())}
    with pytest.raises(ValueError, match="constant learning rate"):
        budget_snapshots("scenes-ldm", tmp_path, (2, 4), cosine)


def test_every_budget_ends_with_its_own_decay_counted_where_it_belongs(tmp_path):
    """cool_down trains a decay of 20% of each budget from the constant run's EMA at
    that budget: the smaller budgets' decays are counted apart, in their own
    manifests; the last one's is the checkpoint's training too. cooldown_config
    decays the rate from lr and refuses a run that was not constant."""
    from dataclasses import asdict, replace

    from diffusion_lib import pretrained
    from diffusion_lib.recipes.base import (
        CONSTANT,
        budget_snapshots,
        cool_down,
        cooldown_config,
        cooldown_steps,
    )
    from diffusion_lib.train import lr_at

    assert [cooldown_steps(s) for s in (750, 6000, 2, 1)] == [150, 1200, 1, 1]
    with pytest.raises(ValueError, match="positive"):
        cooldown_steps(0)
    cfg = TrainConfig(steps=10, batch_size=4, warmup=1, lr_schedule="constant")
    decay = cooldown_config(cfg, 10)
    assert (decay.steps, decay.warmup, decay.lr_schedule) == (2, 0, "cosine")
    rates = [lr_at(i, decay.steps, decay.lr, decay.warmup, "cosine") for i in (0, 1)]
    assert rates[0] == cfg.lr and rates[1] < cfg.lr
    with pytest.raises(ValueError, match="ends a constant-rate run"):
        cooldown_config(replace(cfg, lr_schedule="cosine"), 10)
    fields = {"recipe": "scenes-ldm", "train": asdict(cfg)}
    calls = []

    def cool(step):
        calls.append(step)
        model, _ = pretrained.load_pretrained(
            "scenes-ldm", None, tmp_path, step, CONSTANT
        )
        start = model.conv_in.weight.detach().clone()
        result = train_diffusion(
            model.train().requires_grad_(True),
            NoiseSchedule.make("cosine", 100),
            torch.rand(16, 3, 8, 8) * 2 - 1,
            None,
            cooldown_config(cfg, step),
            progress=False,
        )
        assert not torch.equal(result.ema.model.conv_in.weight, start)
        return result

    with compute.tally() as loops:
        # the snapshots' manifests carry tiny_run's UNet config, as a recipe's do
        fields["config"] = UNetConfig(
            base_channels=8, channel_mults=(1, 2), attention_levels=(1,)
        ).to_dict()
        save, every = budget_snapshots(
            "scenes-ldm", tmp_path, (5, 10), fields, CONSTANT
        )
        tiny_run(10, "constant", callback=save, callback_every=every)
        last, decays = cool_down("scenes-ldm", tmp_path, (5, 10), fields, cool)
    assert calls == [5, 10] and decays == [1, 2] and len(last.losses) == 2
    assert [r.steps for r in loops] == [10, 2]  # the run, then the last decay only
    for step, n in ((5, 1), (10, 2)):
        path = pretrained.checkpoint_path("scenes-ldm", tmp_path, step)
        info = pretrained.read_manifest(path.with_suffix(".json"))
        assert info["budget_step"] == step and info["cooldown_steps"] == n
        assert info["cooldown_compute"]["flops"] == n * loops[0].flops_per_step
    cooled, _ = pretrained.load_pretrained("scenes-ldm", None, tmp_path, 10)
    assert torch.equal(
        cooled.conv_in.weight, last.ema.model.conv_in.weight.half().float()
    )


@pytest.mark.parametrize("loop", ["fit", "vae"])
def test_counting_leaves_the_training_bit_for_bit_as_it_is(loop, monkeypatch):
    """The count runs the first step's pass once more on the side (under the
    counter, the VAE's gradients differ in the last bits: summed in another order),
    so a counted run and an uncounted one end with identical weights."""
    from test_resume import diffusion_run, same, vae_run

    run = {"fit": diffusion_run, "vae": vae_run}[loop]
    counted, _ = run()
    assert counted.flops_per_step > 0
    monkeypatch.setattr(compute.StepCounter, "count", lambda *args: None)
    plain, _ = run()
    assert same(counted.ema.model, plain.ema.model)
    assert counted.losses == plain.losses

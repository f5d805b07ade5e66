"""ControlNet for the mini SD (chapter 13): zero convolutions, the frozen UNet, the
layout masks and the IoU measure."""

import pytest
import torch

from diffusion_lib import data, finetune
from diffusion_lib.controlnet import (
    ControlledUNet,
    ControlNet,
    controlnet_parameters,
    layout_masks,
    mask_iou,
    zero_conv,
)
from diffusion_lib.train import TrainConfig, train_controlnet


def _inputs(b=2):
    g = torch.Generator().manual_seed(3)
    x, ctx = torch.randn(b, 4, 8, 8, generator=g), torch.randn(b, 3, 8, generator=g)
    control = torch.rand(b, 1, 64, 64, generator=g)
    return x, torch.tensor([10, 700])[:b], ctx, control


def test_a_new_controlnet_adds_exactly_nothing(tiny_text_unet):
    unet = tiny_text_unet().eval()
    x, t, ctx, control = _inputs()
    net = ControlNet(unet)
    model = ControlledUNet(unet, net)
    assert torch.equal(
        model(x, t, context=ctx, control=control), unet(x, t, context=ctx)
    )
    down, mid = net(x, t, control, ctx)
    assert len(down) == len(unet.skip_channels)
    assert [d.shape[1] for d in down] == unet.skip_channels
    assert all((d == 0).all() for d in down) and (mid == 0).all()
    for z in [*net.zero_convs, net.mid_zero]:  # once they are not zero, it steers
        torch.nn.init.normal_(z.weight, std=0.1)
    steered = model(x, t, context=ctx, control=control)
    assert (steered - unet(x, t, context=ctx)).abs().max() > 1e-3
    model.scale = 0.0
    assert torch.equal(
        model(x, t, context=ctx, control=control), unet(x, t, context=ctx)
    )


def test_shapes_are_checked(tiny_text_unet):
    unet = tiny_text_unet().eval()
    x, t, ctx, control = _inputs()
    with pytest.raises(ValueError, match="control must be"):
        ControlNet(unet)(x, t, control[..., :32, :32], ctx)
    with pytest.raises(ValueError, match="down_residuals"):
        unet(x, t, context=ctx, down_residuals=[x])
    assert zero_conv(3, 5).weight.abs().sum() == 0


def test_training_moves_only_the_controlnet(tiny_text_unet):
    unet = tiny_text_unet().eval()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    x, _, ctx, control = _inputs(2)
    latents, context = x.repeat(4, 1, 1, 1), ctx.repeat(4, 1, 1)
    from diffusion_lib.schedules import NoiseSchedule

    net, result = train_controlnet(
        unet,
        NoiseSchedule.make("linear", 100),
        latents,
        context,
        torch.zeros(3, 8),
        control.repeat(4, 1, 1, 1),
        TrainConfig(steps=3, batch_size=4, lr=1e-2, warmup=1, ema_decay=0.0),
    )
    assert len(result.losses) == 3
    assert all(torch.equal(v, unet.state_dict()[k]) for k, v in before.items())
    assert any(z.weight.abs().sum() > 0 for z in net.zero_convs)
    parts = controlnet_parameters(net)
    assert parts["encoder copy"] < sum(p.numel() for p in unet.parameters())
    with pytest.raises(ValueError, match="same N"):
        train_controlnet(
            unet,
            None,
            latents,
            context[:2],
            torch.zeros(3, 8),
            control.repeat(4, 1, 1, 1),
        )


def test_layout_masks_and_iou_see_a_moved_or_missing_shape():
    s = data.make_scenes(24, seed=9, split="train")
    control = layout_masks(s)
    assert control.shape == (24, 1, 64, 64) and 0 <= control.min() <= control.max() <= 1
    iou = mask_iou(s.images, control, data.BACKGROUND)
    assert iou.min() >= 0.97  # real images score (nearly) 1
    moved = mask_iou(s.images, control.roll(12, dims=-1), data.BACKGROUND)
    assert moved.mean() < 0.5
    background = torch.tensor(data.BACKGROUND)[None, :, None, None] * 2 - 1
    blank = mask_iou(background.expand_as(s.images), control, data.BACKGROUND)
    assert blank.max() == 0


def test_quick_controlnet_recipe_and_loader(tiny_part4_dir):
    from diffusion_lib import pretrained
    from diffusion_lib.pipelines import MiniStableDiffusion

    info = pretrained.manifest("scenes-controlnet", tiny_part4_dir)
    assert [row["step"] for row in info["iou_curve"]] == [2, 4]
    assert set(info["metrics"]["control"]) == {
        "control + caption",
        "control, empty caption",
        "caption only (no ControlNet)",
    }
    pipe = MiniStableDiffusion.from_pretrained(directory=tiny_part4_dir)
    with pytest.raises(ValueError, match="no controlnet"):
        pipe(["a red circle"], num_steps=2, control=torch.zeros(1, 1, 64, 64))
    pipe.load_controlnet(directory=tiny_part4_dir)
    out = pipe(["a red circle"], num_steps=2, control=torch.zeros(1, 1, 64, 64))
    assert out.shape == (1, 3, 64, 64)


def test_measured_captions_name_every_attribute_they_are_judged_on():
    """make_scenes sometimes leaves a size or a place out of a caption; the prompts of
    measure_control and concept_prompts name all of them (parsed back exactly)."""
    scenes = data.make_scenes(200, seed=5, split="train", two_object_fraction=0.5)
    parsed = [data.parse_scene_caption(c) for c in scenes.captions]
    omitted = sum(
        not torch.equal(p["objects"], o) for p, o in zip(parsed, scenes.objects)
    )
    assert omitted > 0  # the reason for full_captions
    labels = (scenes.objects, scenes.relation, scenes.position)
    for caption, objects, position in zip(
        data.full_captions(*labels), scenes.objects, scenes.position
    ):
        p = data.parse_scene_caption(caption)
        assert torch.equal(p["objects"], objects), caption
        assert int(p["position"]) == int(position), caption
    captions, labels = finetune.concept_prompts(20, seed=3)
    for caption, (shape, colour, size) in zip(captions, labels[0][:, 0].tolist()):
        words = (
            data.SIZES[size],
            tuple(data.ALL_COLOURS)[colour],
            data.ALL_SHAPES[shape],
        )
        assert set(words) <= set(caption.replace(",", "").split()), caption

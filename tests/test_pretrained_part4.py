"""The shipped Part IV checkpoints (chapters 11 to 13): their gates, read from the
manifests the recipes wrote, and fresh checks on the shipped weights."""

import copy

import pytest
import torch

from diffusion_lib import adapters, editing, finetune, loaders, pretrained
from diffusion_lib.pipelines import MiniStableDiffusion

LORA_CONCEPT_GATE, MAX_DROP, MAX_TRAINABLE = 0.80, 0.03, 0.02
INSIDE_GATE, PSNR_GATE = 0.85, 30.0


def test_lora_gates():
    info = pretrained.manifest("scenes-lora")
    assert info["word"] == finetune.CONCEPT and not info["quick"]
    m = info["metrics"]
    assert info["trainable_parameters"] / info["unet_parameters"] < MAX_TRAINABLE
    assert m["after"]["concept"]["joint"] >= LORA_CONCEPT_GATE, m["after"]["concept"]
    n = m["prompts"]  # accuracies count prompts (stored as float32): compare counts
    for group in finetune.OLD_GROUPS:
        drop = (
            m["before (new word, no adapter)"][group]["joint"]
            - m["after"][group]["joint"]
        )
        assert round(drop * n) <= round(MAX_DROP * n), (group, drop)
    # the groups are what their names say (finetune.measured_prompts)
    counts = m["training_captions_measured"]
    assert counts == {
        g: 0 if g in finetune.NEW_CAPTION_GROUPS else m["prompts"]
        for g in ("concept", *finetune.OLD_GROUPS)
    }, counts
    # the VAE probe that decided the concept: diamonds survive it, orange does not
    probe = m["vae_reconstruction"]
    assert probe["diamond"]["joint"] >= 0.95 > 0.5 > probe["orange"]["joint"]


def test_inversion_leaves_old_prompts_exactly_and_is_measured():
    info = pretrained.manifest("scenes-inversion")
    assert info["word"] == finetune.CONCEPT and not info["quick"]
    m = info["metrics"]
    for group in finetune.OLD_GROUPS:
        assert m["after"][group]["joint"] == m["before"][group]["joint"]
    assert all(
        m["training_captions_measured"][g] == 0 for g in finetune.NEW_CAPTION_GROUPS
    )
    width = pretrained.manifest("scenes-clip")["config"]["text_width"]
    assert info["trainable_parameters"] == width  # one row of the embedding table


def test_shipped_lora_agrees_with_peft_on_the_same_weights():
    pipe = MiniStableDiffusion.from_pretrained()
    base = copy.deepcopy(pipe.unet)
    pipe.load_lora_weights()
    info = pretrained.manifest("scenes-lora")
    theirs = adapters.peft_lora(
        base,
        info["rank"],
        info["alpha"],
        info["targets"],
        state=adapters.lora_state_dict(pipe.unet),
    )
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, *pipe.latent_shape, generator=g)
    t = torch.tensor([10, 300, 600, 900])
    ctx = pipe.encode_prompts(["a red diamond", "a blue circle", "a green diamond", ""])
    with torch.no_grad():
        ours, peft_out = pipe.unet(z, t, context=ctx), theirs(z, t, context=ctx)
        plain = base(z, t, context=ctx)
    assert (ours - peft_out).abs().max() <= 1e-5
    assert (ours - plain).abs().max() > 1e-3  # the adapter does something


def test_inpainting_gates():
    info = pretrained.manifest("scenes-inpaint")
    assert not info["quick"]
    row = info["metrics"]["inpainting"]["mask-conditioned UNet"]
    assert row["inside"] >= INSIDE_GATE and row["psnr_outside"] >= PSNR_GATE, row
    sweep = info["metrics"]["img2img_sweep"]
    assert "centre moved (pixels)" in sweep["0.4"]


@pytest.mark.parametrize("n", [12])
def test_shipped_inpainting_on_fresh_edits(n):
    pipe = MiniStableDiffusion.from_pretrained()
    model, _ = loaders.load_inpainting()
    task = finetune.edit_task(n, seed=777)
    fake = editing.inpaint(pipe, model, task[0].images, task[3], task[4], num_steps=25)
    row = finetune.measure_edits(fake, *task[:4])
    assert row["inside"] >= 0.7 and row["psnr_outside"] >= PSNR_GATE, row
    # the same edits judged against the *unedited* labels fail inside the mask
    wrong = finetune.measure_edits(fake, task[0], task[1], task[0].objects, task[3])
    assert wrong["inside"] <= 0.2, wrong


def test_shipped_lora_draws_diamonds_on_new_prompts():
    from diffusion_lib.metrics import scene_accuracy

    pipe = MiniStableDiffusion.from_pretrained()
    pipe.load_lora_weights()
    seen = finetune.training_captions()
    captions, labels = finetune.new_prompts(finetune.concept_prompts, 24, 4242, seen)
    assert not set(captions) & seen
    judge = finetune.concept_judge()
    with_adapter = scene_accuracy(judge(pipe(captions, num_steps=25, seed=1)), *labels)
    adapters.set_lora_scale(pipe.unet, 0.0)  # strength 0: the mini SD alone
    without = scene_accuracy(judge(pipe(captions, num_steps=25, seed=1)), *labels)
    assert with_adapter["joint"] >= 0.7, with_adapter
    assert without["shape"] <= 0.1, without  # the base model draws no diamonds


IOU_GATE = 0.9


def test_controlnet_gate_and_curve():
    info = pretrained.manifest("scenes-controlnet")
    assert not info["quick"] and info["kind"] == "controlnet"
    rows = info["metrics"]["control"]
    assert rows["control + caption"]["mask_iou"] >= IOU_GATE, rows["control + caption"]
    # the UNet alone does not follow a layout it is never shown
    assert rows["caption only (no ControlNet)"]["mask_iou"] <= 0.6, rows
    curve = info["iou_curve"]
    assert len(curve) >= 5 and curve[0]["step"] < curve[-1]["step"]


def test_shipped_controlnet_follows_fresh_layouts():
    from diffusion_lib import controlnet, data

    pipe = MiniStableDiffusion.from_pretrained()
    pipe.load_controlnet()
    scenes = data.make_scenes(8, seed=4343, split="train", two_object_fraction=0.5)
    control = controlnet.layout_masks(scenes)
    fake = pipe(scenes.captions, num_steps=25, seed=1, control=control)
    iou = controlnet.mask_iou(fake, control, data.BACKGROUND)
    assert iou.mean() >= 0.8, iou
    # the same pictures against a layout moved by 4 px score clearly less
    moved = controlnet.mask_iou(fake, control.roll(4, dims=-1), data.BACKGROUND)
    assert moved.mean() <= iou.mean() - 0.2, (moved, iou)

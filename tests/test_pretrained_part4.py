"""The shipped Part IV checkpoints (chapter 12 so far): their gates, read from the
manifests the recipes wrote, and fresh checks on the shipped weights."""

import pytest

from diffusion_lib import editing, finetune, pretrained
from diffusion_lib.pipelines import MiniStableDiffusion

INSIDE_GATE, PSNR_GATE = 0.85, 30.0


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
    model, _ = finetune.load_inpainting()
    task = finetune.edit_task(n, seed=777)
    fake = editing.inpaint(pipe, model, task[0].images, task[3], task[4], num_steps=25)
    row = finetune.measure_edits(fake, *task[:4])
    assert row["inside"] >= 0.7 and row["psnr_outside"] >= PSNR_GATE, row
    # the same edits judged against the *unedited* labels fail inside the mask
    wrong = finetune.measure_edits(fake, task[0], task[1], task[0].objects, task[3])
    assert wrong["inside"] <= 0.2, wrong

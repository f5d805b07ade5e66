"""Image-to-image, RePaint and the mask-conditioned UNet (chapter 12), on real scenes
and tiny models."""

import pytest
import torch

from diffusion_lib import data, editing, loaders, recipes
from diffusion_lib.data import scene_held_out
from diffusion_lib.judge import SceneJudge


@pytest.fixture(scope="module")
def scenes():
    return data.make_scenes(40, seed=5, split="train", two_object_fraction=0.5)


@pytest.fixture(scope="module")
def tiny_pipe(tiny_sd_dir):
    from diffusion_lib.pipelines import MiniStableDiffusion

    return MiniStableDiffusion.from_pretrained(directory=tiny_sd_dir)


def test_object_masks_cover_the_chosen_object_and_not_the_other(scenes):
    two = scenes.objects[:, 1, 0] >= 0
    which = two.long()  # the second object of two-object scenes
    boxes = editing.object_masks(scenes, which)
    cover = data.scene_masks(scenes.objects, scenes.centres, scenes.radii, 64)
    chosen = cover[torch.arange(len(scenes)), which]
    assert ((chosen > 0) <= (boxes[:, 0] > 0)).all()  # the whole object is inside
    other = cover[two, 0]
    assert ((other > 0.5) & (boxes[two, 0] > 0)).sum() == 0  # the other one is not
    with pytest.raises(ValueError, match="absent"):
        editing.object_masks(scenes, torch.ones(len(scenes), dtype=torch.long))


def test_latent_mask_seam_band_and_psnr():
    m = torch.zeros(1, 1, 64, 64)
    m[..., 20:30, 34:44] = 1
    lat = editing.latent_mask(m)
    assert lat.shape == (1, 1, 8, 8) and lat.sum() == 2 * 2  # rows 2-3, cols 4-5
    band = editing.seam_band(m, 2)  # 2 px each side of the 16 x 16 regenerated cells
    assert band.sum() == 20 * 20 - 12 * 12 and not (band & (m > 0.5)).any()
    a = torch.zeros(1, 3, 64, 64)
    b = a.clone()
    b[..., :32, :] = 0.2  # error 0.1 on the [0, 1] scale: 20 dB where it differs
    top = torch.zeros(1, 1, 64, 64, dtype=torch.bool)
    top[..., :32, :] = True
    assert editing.psnr_where(a, b, top).item() == pytest.approx(20.0, abs=1e-4)
    assert editing.psnr_where(a, b, ~top).item() == pytest.approx(100.0)


def test_the_seam_straddles_the_boundary_between_kept_and_regenerated_cells(scenes):
    """The seam is where the decoded image switches from the source's latent to the
    generated one: the 8-pixel latent grid around the mask, not the mask's edge."""
    m = torch.zeros(1, 1, 64, 64)
    m[..., 20:30, 34:44] = 1  # regenerated latent cells: pixel rows 16-31, cols 32-47
    band = editing.seam_band(m, 2)[0, 0]
    column = band[:, 40]  # down through the mask: kept 14-15 | regenerated 16-17, ...
    assert column.nonzero().flatten().tolist() == [14, 15, 16, 17, 30, 31, 32, 33]
    # on real edit masks: every pixel next to the kept/regenerated boundary (outside
    # the mask) is in the seam, and the seam has pixels on both sides of it
    mask = editing.object_masks(scenes, (scenes.objects[:, 1, 0] >= 0).long())
    regen = editing.latent_grid_mask(mask) > 0.5
    band = editing.seam_band(mask)
    edge = torch.zeros_like(regen)
    edge[..., 1:] |= regen[..., 1:] != regen[..., :-1]
    edge[..., :-1] |= regen[..., 1:] != regen[..., :-1]
    edge &= mask < 0.5
    assert edge.any() and not (edge & ~band).any()
    assert (band & regen).any(dim=(1, 2, 3)).all()
    assert (band & ~regen).any(dim=(1, 2, 3)).all()
    with pytest.raises(ValueError, match="multiple"):
        editing.seam_band(torch.zeros(1, 1, 60, 60))


def test_edits_change_shape_and_colour_and_stay_in_the_training_split(scenes):
    which = (scenes.objects[:, 1, 0] >= 0).long()
    new = editing.edit_labels(scenes.objects, which, seed=1)
    idx = torch.arange(len(scenes))
    assert (new[idx, which, :2] != scenes.objects[idx, which, :2]).all()
    assert (new[idx, which, 2] == scenes.objects[idx, which, 2]).all()
    assert (new[idx, 1 - which] == scenes.objects[idx, 1 - which]).all()
    pair, pairing = scene_held_out(new)
    assert not (pair | pairing).any()


def test_the_inside_measure_sees_the_edit_and_only_inside_the_mask(scenes):
    which = (scenes.objects[:, 1, 0] >= 0).long()
    new = editing.edit_labels(scenes.objects, which, seed=1)
    edited, centres, radii = data.render_scenes(
        new, scenes.relation, scenes.position, 64, seed=5
    )
    drawn = data.ScenesData(
        edited, new, scenes.relation, scenes.position, centres, radii, scenes.captions
    )
    mask = editing.object_masks(drawn, which)  # where the edited object was drawn
    verdict = SceneJudge()(edited)
    ok = editing.edited_object_right(verdict, new, which, mask)
    assert ok.float().mean() >= 0.95
    # the unedited source does not pass for the edit
    source = SceneJudge()(scenes.images)
    source_mask = editing.object_masks(scenes, which)
    assert editing.edited_object_right(source, new, which, source_mask).sum() == 0
    # nor does the edit judged against a mask somewhere else
    elsewhere = mask.roll(32, dims=-1) * (1 - mask)
    assert (
        editing.edited_object_right(verdict, new, which, elsewhere).float().mean() < 0.3
    )


def test_training_masks_mix_objects_rectangles_and_whole_images():
    s = data.make_scenes(400, seed=2, split="train")
    masks = editing.training_masks(s, seed=0)
    full = (masks == 1).flatten(1).all(1).float().mean()
    assert 0.18 < full < 0.32 and masks.shape == (400, 1, 64, 64)
    assert ((masks == 0) | (masks == 1)).all() and (masks.flatten(1).sum(1) > 0).all()


def test_inpainting_unet_starts_as_the_text_to_image_unet(tiny_text_unet):
    unet = tiny_text_unet()
    model = editing.InpaintingUNet.from_text_to_image(unet)
    assert model.unet.config.in_channels == 9
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([5, 900]), torch.randn(2, 3, 8)
    cond = torch.randn(2, 5, 8, 8)
    assert torch.equal(model(x, t, context=ctx, cond=cond), unet(x, t, context=ctx))
    with pytest.raises(ValueError, match="needs cond"):
        model(x, t, context=ctx)


def test_repaint_keeps_the_known_region_of_the_latent_exactly(tiny_pipe, scenes):
    images, prompts = scenes.images[:2], scenes.captions[:2]
    keep_all = torch.zeros(2, 1, 64, 64)
    out = editing.repaint(tiny_pipe, images, keep_all, prompts, num_steps=3, resample=2)
    recon = tiny_pipe.decode(tiny_pipe.vae.encode_scaled(images))
    assert torch.equal(out, recon)
    mask = editing.object_masks(scenes, torch.zeros(len(scenes), dtype=torch.long))[:2]
    out = editing.repaint(tiny_pipe, images, mask, prompts, num_steps=3, resample=2)
    assert out.shape == images.shape and not torch.equal(out, recon)
    with pytest.raises(ValueError, match="resample"):
        editing.repaint(tiny_pipe, images, mask, prompts, resample=0)


def test_img2img_checks_strength_and_inpaint_runs(tiny_pipe, scenes):
    out = tiny_pipe.img2img(scenes.images[:2], scenes.captions[:2], 0.5, num_steps=4)
    assert out.shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="strength"):
        tiny_pipe.img2img(scenes.images[:2], scenes.captions[:2], 0.0)
    model = editing.InpaintingUNet.from_text_to_image(tiny_pipe.unet)
    mask = torch.ones(2, 1, 64, 64)
    out = editing.inpaint(
        tiny_pipe, model, scenes.images[:2], mask, scenes.captions[:2], num_steps=2
    )
    assert out.shape == (2, 3, 64, 64)


def test_quick_inpaint_recipe_measures_every_method(tiny_part4_dir):
    from diffusion_lib import pretrained

    info = pretrained.manifest("scenes-inpaint", tiny_part4_dir)
    assert set(info["metrics"]["inpainting"]) == {
        "mask-conditioned UNet",
        f"RePaint (U = {recipes.REPAINT_RESAMPLE})",
        "RePaint without resampling (U = 1)",
    }
    assert set(info["metrics"]["img2img_sweep"]) == {
        "0.1",
        "0.2",
        "0.4",
        "0.6",
        "0.8",
        "1",
    }
    model, manifest = loaders.load_inpainting(tiny_part4_dir)
    assert model.unet.config.in_channels == 9 and manifest["sha256"] == info["sha256"]


def test_inpaint_measure_stage_rewrites_only_the_metrics(tmp_path, tiny_part4_dir):
    import shutil

    from diffusion_lib import pretrained

    for f in tiny_part4_dir.iterdir():
        shutil.copy(f, tmp_path)
    before = pretrained.manifest("scenes-inpaint", tmp_path)
    after = recipes.RECIPES["scenes-inpaint"].run(tmp_path, quick=True, stage="measure")
    assert (
        after["sha256"] == before["sha256"]
        and "centre moved (pixels)" in (after["metrics"]["img2img_sweep"]["0.4"])
    )
    loaders.load_inpainting(tmp_path)  # the weights still match their hash

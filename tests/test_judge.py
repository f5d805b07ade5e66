"""The open-set judge: agreement with the labels of real images, and "none of these"
for what a person would not accept (off-palette colour, noise, blank, extra objects)."""

import numpy as np
import pytest
import torch

from diffusion_lib.data import ATTRIBUTES, BACKGROUND, COLOURS, make_shapes
from diffusion_lib.data.geometry import shape_mask
from diffusion_lib.metrics import (
    NONE,
    Judge,
    by_pair,
    image_statistics,
    prompt_accuracy,
)

S = 16


def draw(shapes, size=S, supersample=4) -> torch.Tensor:
    """One image [3, S, S] in [-1, 1]: shapes = [(name, rgb, (cy, cx), r), ...]."""
    n = size * supersample
    fine = (np.arange(n) + 0.5) / n
    img = np.ones((3, size, size)) * np.array(BACKGROUND)[:, None, None]
    for name, rgb, (cy, cx), r in shapes:
        m = shape_mask(name, fine[:, None], fine[None, :], cy, cx, r)
        m = m.reshape(size, supersample, size, supersample).mean(axis=(1, 3))
        img = img + (np.array(rgb)[:, None, None] - img) * m[None]
    return torch.from_numpy(img).float() * 2 - 1


def labels_of(shape, colour, size, position):
    values = (shape, colour, size, position)
    return [ATTRIBUTES[a].index(v) for a, v in zip(ATTRIBUTES, values)]


@pytest.fixture(scope="module")
def judge():
    return Judge()


def test_judge_agrees_with_the_labels_of_held_out_real_images(judge):
    real = make_shapes(1000, S, seed=4242, split="all")  # seeds never used elsewhere
    acc = prompt_accuracy(real.images, real.labels, judge)
    print("judge on real images:", acc)
    assert min(acc.values()) >= 0.98, acc
    verdict = judge(real.images)
    # the tolerances leave a margin around what real images need
    cfg = judge.config
    assert verdict.colour_error.max() < 0.6 * cfg.colour_tolerance
    assert verdict.shape_iou.min() > cfg.min_shape_iou + 0.1
    assert verdict.background_rms.max() < 0.3 * cfg.background_tolerance


def test_palette_colours_pass_and_off_palette_colours_are_none(judge):
    asked = labels_of("circle", "yellow", "large", "centre")
    yellow = draw([("circle", COLOURS["yellow"], (0.5, 0.5), 0.26)])
    orange = draw([("circle", (1.0, 0.55, 0.1), (0.5, 0.5), 0.26)])
    grey = draw([("circle", (0.55, 0.55, 0.55), (0.5, 0.5), 0.26)])
    v = judge(torch.stack([yellow, orange, grey]))
    assert v.labels[0].tolist() == asked
    assert v.labels[1, 1] == NONE and v.labels[2, 1] == NONE
    assert v.labels[1, 0] == asked[0], "the shape of an orange circle is still a circle"
    assert v.colour_error_to(torch.tensor([1, 3, 3]))[1] > 0.25
    assert prompt_accuracy(torch.stack([yellow, orange]), torch.tensor([asked] * 2))[
        "joint"
    ] == pytest.approx(0.5)


@pytest.mark.parametrize("sigma", [0.1, 0.2, 0.4])  # in [-1, 1] units
def test_noisy_backgrounds_are_rejected(judge, sigma):
    img = draw([("square", COLOURS["red"], (0.32, 0.32), 0.17)])
    g = torch.Generator().manual_seed(0)
    v = judge((img + sigma * torch.randn(img.shape, generator=g))[None])
    assert not v.valid[0], v.reasons
    assert v.reasons[0] == "noisy background" or v.reasons[0].endswith("objects")


def test_faint_noise_a_person_would_not_see_is_accepted(judge):
    img = draw([("square", COLOURS["red"], (0.32, 0.32), 0.17)])
    faint = img + 0.005 * torch.randn(
        img.shape, generator=torch.Generator().manual_seed(0)
    )
    v = judge(faint[None])
    assert v.valid[0] and v.labels[0].tolist() == labels_of(
        "square", "red", "small", "top left"
    )


def test_blank_extra_objects_and_no_background_are_rejected(judge):
    blank = draw([])
    two = draw(
        [
            ("circle", COLOURS["blue"], (0.32, 0.32), 0.17),
            ("square", COLOURS["green"], (0.68, 0.68), 0.17),
        ]
    )
    flood = torch.ones(3, S, S) * torch.tensor(COLOURS["cyan"]).view(3, 1, 1) * 2 - 1
    v = judge(torch.stack([blank, two, flood]))
    assert v.reasons == ["blank", "2 objects", "no background"]
    assert not v.valid.any() and (v.labels[0] == NONE).all()


def test_a_shape_that_is_no_shape_is_none(judge):
    # a thin bar and a ring: neither a circle, a square nor a triangle
    bar = draw([("square", COLOURS["red"], (0.5, 0.5), 0.3)])
    bar[:, :6] = bar[:, 10:] = torch.tensor(BACKGROUND).view(3, 1, 1) * 2 - 1
    ring = draw(
        [
            ("circle", COLOURS["red"], (0.5, 0.5), 0.4),
            ("circle", BACKGROUND, (0.5, 0.5), 0.22),
        ]
    )
    v = judge(torch.stack([bar, ring]))
    assert (v.labels[:, 0] == NONE).all(), (v.labels, v.shape_iou)


def test_broken_images_are_judged_not_raised(judge):
    bad = torch.full((2, 3, S, S), float("nan"))
    bad[1] = 1e6
    v = judge(bad)
    assert not v.valid.any()
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        judge(torch.zeros(3, S, S))
    with pytest.raises(ValueError, match="label rows"):
        prompt_accuracy(torch.zeros(2, 3, S, S), torch.zeros(3, 4, dtype=torch.long))


def test_statistics_and_per_pair_report(judge):
    real = make_shapes(60, S, seed=5, split="holdout")
    v = judge(real.images)
    stats = image_statistics(v, real.labels)
    assert stats["background_rms_mean"] < 0.01 and stats["colour_error_median"] < 0.07
    pairs = by_pair(v, real.labels)
    assert set(pairs) == {"blue triangle", "yellow circle", "purple square"}
    assert sum(p["images"] for p in pairs.values()) == 60
    assert all(p["joint"] == 1.0 for p in pairs.values())

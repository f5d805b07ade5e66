import pytest
import torch

from diffusion_lib.data import make_shapes
from diffusion_lib.metrics import (
    DEGRADATIONS,
    Evaluator,
    EvaluatorFeatures,
    attribute_accuracy,
    blur,
    feature_extractor,
    fid_kid,
    real_vs_real,
)


def test_attribute_accuracy():
    labels = torch.tensor([[0, 1, 0, 0], [1, 2, 0, 0], [2, 3, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [1, 0, 0, 0], [0, 3, 1, 1]])
    acc = attribute_accuracy(pred, labels)
    assert acc == pytest.approx({"shape": 2 / 3, "colour": 2 / 3, "joint": 1 / 3})
    with pytest.raises(ValueError, match="unknown attributes"):
        attribute_accuracy(pred, labels, ("hue",))


def test_fid_is_zero_for_identical_sets_and_grows_with_a_shift():
    torch.manual_seed(0)
    ev = Evaluator().eval()
    assert EvaluatorFeatures(ev).num_features == 128
    real = make_shapes(200, 16, seed=0).images
    same = fid_kid(ev, real, real, kid_subset=50, features="evaluator")
    assert same["fid"] == pytest.approx(0.0, abs=1e-3)
    shifted = fid_kid(
        ev, (real + 0.5).clamp(-1, 1), real, kid_subset=50, features="evaluator"
    )
    assert shifted["fid"] > 1.0 and shifted["kid"] > same["kid"]
    with pytest.raises(ValueError, match="same size"):
        real_vs_real(ev, real[:10], real[:20])


def test_appearance_features_see_noise_that_evaluator_features_miss():
    torch.manual_seed(0)
    ev = Evaluator().eval()
    real = make_shapes(200, 16, seed=0).images
    other = make_shapes(200, 16, seed=1).images
    g = torch.Generator().manual_seed(0)
    noisy = (real + 0.05 * torch.randn(real.shape, generator=g)).clamp(-1, 1)
    same = fid_kid(ev, real, real, kid_subset=50)
    assert same["fid"] == pytest.approx(0.0, abs=1e-3)
    base = fid_kid(ev, other, real, kid_subset=50)["fid"]
    assert fid_kid(ev, noisy, real, kid_subset=50)["fid"] > 3 * base
    feats = feature_extractor(ev, 16)
    assert feats.num_features == 128 + 48 + 12 + 12
    out = feats(real[:50])
    assert out.shape == (50, feats.num_features) and torch.isfinite(out).all()


def test_fid_arguments_are_checked():
    ev = Evaluator().eval()
    real = make_shapes(20, 16, seed=0).images
    with pytest.raises(ValueError, match="expected one of"):
        fid_kid(ev, real, real, features="inception")
    with pytest.raises(ValueError, match="image shapes differ"):
        fid_kid(ev, real, make_shapes(20, 32, seed=0).images)


def test_degradations_cover_what_fid_must_see():
    names = set(DEGRADATIONS)
    for word in ("darkened", "colour", "noise", "blurred", "swapped", "moved"):
        assert any(word in n for n in names), word
    assert sum("noise" in n for n in names) >= 2
    real = make_shapes(8, 16, seed=0).images
    for name, degrade in DEGRADATIONS.items():
        out = degrade(real, 0)
        assert out.shape == real.shape and out.min() >= -1 and out.max() <= 1, name
        assert not torch.allclose(out, real), f"{name} changed nothing"
    # blur keeps the mean colour; shifting keeps the background colour in the corner
    assert torch.allclose(blur(real).mean((2, 3)), real.mean((2, 3)), atol=0.02)


class _PooledColours(torch.nn.Module):
    """A tiny feature extractor for torchmetrics: each image's mean colour and its
    spread per channel (6 features)."""

    num_features = 6

    def forward(self, x):
        x = x.float().flatten(2)
        return torch.cat([x.mean(-1), x.std(-1)], dim=1).double()


def test_kid_spread_is_over_subsets_that_differ():
    """With 100 images a side the old subset size (100) drew the whole set every time:
    a spread of exactly 0. Subsets of half a set give a real spread; below 4 images a
    side there is none to give (NaN)."""
    from diffusion_lib.metrics import fid_kid_with

    gen = torch.Generator().manual_seed(0)
    fake = torch.rand(100, 3, 8, 8, generator=gen) * 2 - 1
    real = torch.rand(100, 3, 8, 8, generator=gen) * 2 - 1
    out = fid_kid_with(_PooledColours(), fake, real, kid_subset=100)
    assert out["kid_std"] > 1e-6, out
    tiny = fid_kid_with(_PooledColours(), fake[:3], real[:3])
    assert tiny["kid_std"] != tiny["kid_std"], tiny  # NaN


def test_fid_and_kid_agree_with_torchmetrics_and_see_a_colour_swap():
    """The library's FID and KID are torchmetrics' numbers (same features, same
    subsets from the same global seed), over more than one chunk of 500 images; and
    the comparison can fail: a colour swap moves both far above real vs real."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    from diffusion_lib.metrics import fid_kid_with

    gen = torch.Generator().manual_seed(0)
    real = torch.rand(600, 3, 8, 8, generator=gen) * 2 - 1
    fake = (torch.rand(520, 3, 8, 8, generator=gen) * 1.6 - 0.9).flip(1)
    torch.manual_seed(3)
    ours = fid_kid_with(_PooledColours(), fake, real, kid_subset=50)
    fid = FrechetInceptionDistance(feature=_PooledColours())
    kid = KernelInceptionDistance(feature=_PooledColours(), subset_size=50)
    for metric in (fid, kid):
        for images, is_real in ((real, True), (fake, False)):
            for chunk in images.split(500):
                metric.update(chunk, real=is_real)
    torch.manual_seed(3)
    kid_mean, kid_std = kid.compute()
    assert ours["fid"] == pytest.approx(fid.compute().item(), rel=1e-9)
    assert ours["kid"] == pytest.approx(kid_mean.item(), rel=1e-9)
    assert ours["kid_std"] == pytest.approx(kid_std.item(), rel=1e-9)
    same = fid_kid_with(_PooledColours(), real[300:], real[:300], kid_subset=50)
    assert ours["fid"] > 10 * same["fid"] and ours["kid"] > same["kid"] + 0.01

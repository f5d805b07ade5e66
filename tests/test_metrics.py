import pytest
import torch

from diffusion_lib.data import make_shapes
from diffusion_lib.metrics import (
    Evaluator,
    EvaluatorFeatures,
    attribute_accuracy,
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
    same = fid_kid(ev, real, real, kid_subset=50)
    assert same["fid"] == pytest.approx(0.0, abs=1e-3)
    shifted = fid_kid(ev, (real + 0.5).clamp(-1, 1), real, kid_subset=50)
    assert shifted["fid"] > 1.0 and shifted["kid"] > same["kid"]
    with pytest.raises(ValueError, match="same size"):
        real_vs_real(ev, real[:10], real[:20])

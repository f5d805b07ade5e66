import struct

import pytest
import torch

from diffusion_lib import data


def test_shapes_are_deterministic_and_in_range():
    a, b = data.make_shapes(32, 16, seed=5), data.make_shapes(32, 16, seed=5)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert not torch.equal(a.images, data.make_shapes(32, 16, seed=6).images)
    assert a.images.shape == (32, 3, 16, 16) and a.labels.shape == (32, 4)
    assert a.images.min() >= -1 and a.images.max() <= 1
    assert len(data.COLOURS) >= 6 and {"circle", "square", "triangle"} <= set(
        data.SHAPES
    )


def test_held_out_combinations_never_appear_in_training():
    train = data.make_shapes(3000, 16, seed=0, split="train")
    held = data.make_shapes(300, 16, seed=0, split="holdout")
    pairs = lambda d: {
        (data.SHAPES[s], tuple(data.COLOURS)[c]) for s, c in d.labels[:, :2].tolist()
    }
    assert pairs(train).isdisjoint(data.HELD_OUT)
    assert pairs(held) == set(data.HELD_OUT)
    assert len(pairs(train)) == len(data.SHAPES) * len(data.COLOURS) - len(
        data.HELD_OUT
    )
    with pytest.raises(ValueError, match="expected one of"):
        data.sample_labels(4, split="validation")


def test_captions_round_trip_through_the_parser():
    d = data.make_shapes(200, 16, seed=1)
    assert len({c.split()[0] for c in d.captions}) > 1, "several phrasings"
    for caption, labels in zip(d.captions, d.labels):
        assert torch.equal(data.parse_caption(caption), labels), caption
    assert data.parse_caption("A large Red circle in the CENTER").tolist() == [
        0,
        0,
        1,
        4,
    ]
    with pytest.raises(ValueError, match="exactly one colour"):
        data.parse_caption("a small circle in the centre")


def test_rendered_colour_and_position():
    img = data.render_shape([1, 0, 1, 0], image_size=16)  # large red square, top left
    assert img[:, 4, 4].tolist() == pytest.approx(list(data.COLOURS["red"]), abs=1e-6)
    assert img[:, 13, 13].tolist() == pytest.approx(list(data.BACKGROUND), abs=1e-6)


def test_digits_offline():
    x, y = data.load_digits_images(16)
    assert x.shape == (1797, 1, 16, 16) and y.shape == (1797,)
    assert x.min() >= -1 and x.max() <= 1 and set(y.tolist()) == set(range(10))


def _write_idx(path, images=None, labels=None):
    with open(path, "wb") as f:
        if images is not None:
            f.write(
                struct.pack(">IIII", 0x803, len(images), 28, 28)
                + images.numpy().tobytes()
            )
        else:
            f.write(struct.pack(">II", 0x801, len(labels)) + labels.numpy().tobytes())


@pytest.mark.parametrize(
    "name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")]
)
def test_torchvision_loader_on_files_written_here(tmp_path, name, folder):
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 3, 4], dtype=torch.uint8)
    for split in ("train", "t10k"):
        _write_idx(raw / f"{split}-images-idx3-ubyte", images=images)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", labels=labels)
    ds = data.load_torchvision_dataset(name, str(tmp_path), train=True, download=False)
    x, y = data.stack_dataset(ds)
    assert x.shape == (5, 1, 28, 28) and y.tolist() == [0, 1, 2, 3, 4]
    torch.testing.assert_close(x[:, 0], images.float() / 127.5 - 1, atol=1e-6, rtol=0)


def test_torchvision_loader_errors(tmp_path):
    with pytest.raises(RuntimeError, match="download=True"):
        data.load_torchvision_dataset("cifar10", str(tmp_path), download=False)
    with pytest.raises(ValueError, match="expected one of"):
        data.load_torchvision_dataset("imagenet", str(tmp_path))

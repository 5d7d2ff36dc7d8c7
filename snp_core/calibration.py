"""Calibration images for the activation-based Q/K criterion.

The paper scores Q/K pairs on 64 training images (docs/method.md §2.3). Sources, in
order of preference:

* a folder of images (ImageFolder layout ``root/<class>/<img>``, or flat): a
  seeded random sample, transformed with the model's own eval preprocessing
  (timm's data config: resize, centre crop, mean/std);
* a tensor ``[N, 3, H, W]`` already preprocessed (Python API), or a ``.npy`` /
  ``.pt`` file holding one (``.pt`` is read with ``weights_only=True``);
* nothing: the colour photographs shipped inside scikit-image, cut into seeded
  random crops. That fallback is logged as a warning every time, because scores
  from a handful of photos are not scores from the user's data.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import CalibrationError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
# Colour photographs bundled in scikit-image's wheel (no download needed).
FALLBACK_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                   "immunohistochemistry", "retina", "colorwheel")


@dataclass
class Calibration:
    """Preprocessed images plus where they came from (recorded in the plan)."""

    images: torch.Tensor
    source: str
    description: str

    def info(self) -> dict:
        return {"source": self.source, "description": self.description, "num_images": int(self.images.shape[0]),
                "shape": list(self.images.shape[1:])}


def load(source: str | Path | torch.Tensor | None, model: torch.nn.Module, num_images: int = 64,
         seed: int = 0) -> Calibration:
    """Calibration images for `model` from `source` (see the module docstring)."""
    if num_images < 1:
        raise CalibrationError(f"number of calibration images {num_images} must be at least 1")
    if isinstance(source, torch.Tensor):
        return Calibration(_check_tensor(source, "tensor")[:num_images], "tensor", "tensor given by the caller")
    if source is None:
        return _fallback(model, num_images, seed)
    path = Path(source)
    if path.is_dir():
        return _from_folder(path, model, num_images, seed)
    if path.suffix in (".npy", ".pt") and path.is_file():
        return Calibration(_check_tensor(_read_tensor(path), str(path))[:num_images], str(path), "tensor file")
    raise CalibrationError(f"calibration source {str(source)!r} is not a folder of images or a .npy/.pt tensor file")


def _read_tensor(path: Path) -> torch.Tensor:
    try:
        if path.suffix == ".npy":
            return torch.from_numpy(np.load(path, allow_pickle=False)).float()
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any reader error is a bad file, reported in one line
        raise CalibrationError(f"cannot read calibration tensor {str(path)!r}: {exc}".splitlines()[0]) from None
    if not isinstance(data, torch.Tensor):
        raise CalibrationError(f"calibration file {str(path)!r} holds a {type(data).__name__}, not a tensor")
    return data.float()


def _check_tensor(images: torch.Tensor, where: str) -> torch.Tensor:
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise CalibrationError(f"calibration {where} has shape {tuple(images.shape)}; expected [N>0, 3, H, W]")
    return images.float()


def _from_folder(root: Path, model: torch.nn.Module, num_images: int, seed: int) -> Calibration:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise CalibrationError(
            f"calibration folder {str(root)!r} has no images (looked recursively for {', '.join(IMAGE_SUFFIXES)})"
        )
    if len(files) < num_images:
        log.warning("calibration folder %s has %d images, fewer than the %d asked for; using all of them",
                    root, len(files), num_images)
    chosen = random.Random(seed).sample(files, min(num_images, len(files)))
    transform = _eval_transform(model)
    images = []
    for path in chosen:
        try:
            with Image.open(path) as img:
                images.append(transform(img.convert("RGB")))
        except (OSError, UnidentifiedImageError) as exc:
            raise CalibrationError(f"cannot read calibration image {str(path)!r}: {exc}") from None
    return Calibration(torch.stack(images), str(root), f"{len(images)} images sampled with seed {seed}")


def _data_config(model: torch.nn.Module) -> dict:
    """timm's preprocessing for `model`, at the input size the model really takes."""
    from timm.data import resolve_data_config

    from .models import input_size

    return resolve_data_config({"input_size": input_size(model)}, model=model)


def _eval_transform(model: torch.nn.Module):
    from timm.data import create_transform

    return create_transform(**_data_config(model), is_training=False)


def _fallback(model: torch.nn.Module, num_images: int, seed: int) -> Calibration:
    """Seeded random crops of scikit-image's bundled photographs (logged, never silent)."""
    import skimage.data
    from torchvision import transforms as T

    cfg = _data_config(model)
    crop = T.Compose([
        T.RandomResizedCrop(cfg["input_size"][1:], scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(cfg["mean"], cfg["std"]),
    ])
    photos = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in FALLBACK_IMAGES]
    log.warning(
        "no calibration images given: falling back to %d random crops of %d scikit-image sample photos. "
        "Q/K scores will reflect those photos, not your data; pass --calib DIR for real pruning.",
        num_images, len(photos),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        images = torch.stack([crop(photos[i % len(photos)]) for i in range(num_images)])
    return Calibration(images, "fallback:scikit-image",
                       f"{num_images} random crops (seed {seed}) of scikit-image photos: {', '.join(FALLBACK_IMAGES)}")

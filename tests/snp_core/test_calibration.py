"""Calibration sources: a folder, a tensor file, and the logged fallback."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

import snp_core
from snp_core.errors import CalibrationError


@pytest.fixture(scope="module")
def model():
    return snp_core.create("deit_tiny_patch16_224")


def test_image_folder_layout(tmp_path, model):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    calib = snp_core.calibration.load(tmp_path, model, num_images=4, seed=1)
    assert calib.images.shape == (4, 3, 224, 224)
    assert calib.info()["num_images"] == 4 and calib.source == str(tmp_path)
    again = snp_core.calibration.load(tmp_path, model, num_images=4, seed=1)
    assert torch.equal(calib.images, again.images)  # seeded sample


def test_tensor_files(tmp_path, model):
    np.save(tmp_path / "x.npy", np.zeros((3, 3, 224, 224), dtype=np.float32))
    torch.save(torch.ones(2, 3, 224, 224), tmp_path / "x.pt")
    assert snp_core.calibration.load(tmp_path / "x.npy", model).images.shape[0] == 3
    assert snp_core.calibration.load(tmp_path / "x.pt", model).images.sum() == 2 * 3 * 224 * 224
    np.save(tmp_path / "bad.npy", np.zeros((3, 224, 224), dtype=np.float32))
    with pytest.raises(CalibrationError, match="expected \\[N>0, 3, H, W\\]"):
        snp_core.calibration.load(tmp_path / "bad.npy", model)


def test_fallback_is_logged(model, caplog):
    with caplog.at_level(logging.WARNING):
        calib = snp_core.calibration.load(None, model, num_images=5)
    assert calib.images.shape == (5, 3, 224, 224) and calib.source == "fallback:scikit-image"
    assert "no calibration images given" in caplog.text


def test_empty_folder(tmp_path, model):
    (tmp_path / "class_a").mkdir()
    (tmp_path / "class_a" / "notes.txt").write_text("no images here")
    with pytest.raises(CalibrationError, match=f"'{tmp_path}' has no images"):
        snp_core.calibration.load(tmp_path, model)

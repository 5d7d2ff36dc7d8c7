"""Every export path of a pruned ViT matches eager PyTorch within 1e-4 on real photos (issue 15, acceptance 4).

A 2-block DeiT-T at 224x224 (random weights, q/k and v cut to different widths),
fed scikit-image's sample photos through timm's eval preprocessing
(`snp_core.calibration`'s fallback): the plain .onnx, the .onnx with ONNX's fused
``Attention`` operator, the .pt/.pt2 traced for a CPU target (explicit attention)
and for a CUDA target (SDPA on the pruned widths, run here on the CPU), and the
zero-padded SDPA kernel the benchmarks measure.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import exporters
import snp_core
from exporters.fused_attention import fuse_attention
from helpers import randomize_norms, uniform_plan

NAME = "deit_tiny_patch16_224"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def pruned_and_photos() -> tuple[torch.nn.Module, torch.Tensor]:
    original = randomize_norms(snp_core.create(NAME, depth=2))
    pruned = snp_core.prune(original, uniform_plan(original, NAME, qk=0.5, v=0.25, ffn=0.5, embed=0.25)).eval()
    logging.disable(logging.WARNING)  # "no calibration images given: falling back to ... sample photos"
    try:
        photos = snp_core.calibration.load(None, pruned, num_images=3).images
    finally:
        logging.disable(logging.NOTSET)
    return pruned, photos


def eager(model: torch.nn.Module, photos: torch.Tensor) -> np.ndarray:
    with torch.inference_mode(), snp_core.attention_kernel(model, "explicit"):
        return model(photos).numpy()


def onnx_outputs(proto: onnx.ModelProto, photos: torch.Tensor) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    s = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {s.get_inputs()[0].name: p[None].numpy()})[0] for p in photos])


@pytest.mark.parametrize("rewrite", [None, "onnx_attention"])
def test_onnx_paths_match_on_real_photos(pruned_and_photos, tmp_path, rewrite) -> None:
    model, photos = pruned_and_photos
    proto = onnx.load(str(exporters.export(model, "onnx", tmp_path, input_shape=(1, 3, 224, 224)).path))
    if rewrite:
        proto = fuse_attention(proto, rewrite)[0]
    assert np.abs(onnx_outputs(proto, photos) - eager(model, photos)).max() <= TOLERANCE


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_torch_paths_match_on_real_photos(pruned_and_photos, tmp_path, fmt, target) -> None:
    model, photos = pruned_and_photos
    art = exporters.export(model, fmt, tmp_path, input_shape=(1, 3, 224, 224), target=target)
    loaded = (torch.jit.load(str(art.path)) if fmt == "torchscript" else torch.export.load(str(art.path)).module())
    with torch.inference_mode():
        got = np.concatenate([loaded(p[None]).numpy() for p in photos])
    assert np.abs(got - eager(model, photos)).max() <= TOLERANCE


def test_padded_sdpa_matches_on_real_photos(pruned_and_photos) -> None:
    model, photos = pruned_and_photos
    with torch.inference_mode(), snp_core.attention_kernel(model, "sdpa_padded"):
        got = model(photos).numpy()
    assert np.abs(got - eager(model, photos)).max() <= TOLERANCE

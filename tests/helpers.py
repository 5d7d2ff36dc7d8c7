"""Small shared builders for the tests (real timm models, random init)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer

import snp_core


def tiny_vit(**overrides) -> VisionTransformer:
    """A 2-block timm VisionTransformer on 32x32 images: real code path, fast."""
    cfg = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, mlp_ratio=4.0, num_classes=10)
    cfg.update(overrides)
    torch.manual_seed(0)
    return VisionTransformer(**cfg).eval()


def randomize_norms(model: torch.nn.Module) -> None:
    """Non-trivial LayerNorm/LayerScale/bias values so slicing errors cannot hide behind 1s and 0s."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 or name.endswith("gamma") or "token" in name or "pos_embed" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))


def uniform_plan(model, name: str, criterion: str = "l2", **ratios) -> snp_core.Plan:
    adapter = snp_core.adapter_for(model, name)
    return snp_core.make_plan(model, name, snp_core.ratios.uniform(adapter.groups(), **ratios),
                              snp_core.get_criterion(criterion), progress=False)


def tiny_sweep_toml(store_dir, artifacts, devices: str, *, iterations: int = 5, min_seconds: float = 0.0,
                    timeout: float = 120, grace: float = 30, tiny_extra: str = "") -> str:
    """bench.toml text for a real sweep of a 2-block 64x64 DeiT-T and its l2-pruned version.

    The same code paths as a full DeiT sweep, in seconds; `devices` is appended as
    given and `tiny_extra` lines go into the original model's table (label, top1).
    """
    return f"""
[paths]
store = "{store_dir}/bench.sqlite"
artifacts = "{artifacts}"

[models.tiny]
timm = "deit_tiny_patch16_224"
weights = "random"
kwargs = {{ img_size = 64, depth = 2 }}
{tiny_extra}

[models.tiny_snp]
base = "tiny"
ratios = {{ qk = 0.5, v = 0.5, ffn = 0.5, embed = 0.25 }}
criterion = "l2"

[sweep]
models = ["tiny", "tiny_snp"]
formats = ["onnx", "torchscript"]
batch = [1]

[measure]
warmup_iterations = 3
iterations = {iterations}
min_seconds = {min_seconds}
timeout_s = {timeout}
grace_s = {grace}
""" + devices


def ssh_device(name: str, server, workdir: Path, python: str = sys.executable, known_hosts: Path | None = None,
               runtimes: str = "{ onnxruntime = { threads = 1 }, torch = { threads = 1 } }") -> str:
    return f"""
[devices.{name}]
kind = "ssh"
host = "{server.alias}"
ssh_config = "{server.ssh_config}"
known_hosts = "{known_hosts or server.known_hosts}"
identity_file = "{server.client_key}"
python = "{python}"
workdir = {json.dumps(str(workdir))}
runtimes = {runtimes}
"""


def local_device(name: str, workdir: Path, python: str = sys.executable) -> str:
    return f"""
[devices.{name}]
kind = "local"
python = "{python}"
workdir = {json.dumps(str(workdir))}
runtimes = {{ onnxruntime = {{ threads = 1 }}, torch = {{ threads = 1 }} }}
"""

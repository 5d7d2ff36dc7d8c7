"""Small shared builders for the tests (real timm models, random init)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import snp_core
from snp_core.adapters import VitAdapter


def tiny_vit(**overrides) -> VisionTransformer:
    """A 2-block timm VisionTransformer on 32x32 images (`VitAdapter.tiny`, with `overrides`): real code path, fast."""
    cfg = dict(VitAdapter.tiny[1], mlp_ratio=4.0)
    cfg.update(overrides)
    torch.manual_seed(0)
    return VisionTransformer(**cfg).eval()


def randomize_norms(model: nn.Module) -> nn.Module:
    """Non-trivial values wherever timm starts at 1s and 0s, so slicing errors cannot hide behind them.

    Every parameter but the Linear/conv weight matrices (norms, biases, LayerScale
    gammas, tokens, position embeddings, attention biases) and BatchNorm running
    statistics. Caches built from parameters (timm's attention-bias cache) are reset.
    """
    g = torch.Generator().manual_seed(1)
    matrices = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if id(p) not in matrices:
                one = 1.0 if "norm" in name and name.endswith("weight") else 0.0
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 + one)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.2 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return model.train(model.training)


def flop_counter_macs(model: nn.Module, input_size: tuple[int, ...] | None = None) -> int:
    """MACs of one image by torch's FlopCounterMode (FLOPs / 2), independently of `snp_core.count_macs`.

    Attention runs through SDPA's math backend, whose matmuls the counter sees (it has no
    formula for the fused CPU kernel).
    """
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH), torch.inference_mode():
        model(torch.zeros(1, *(input_size or snp_core.models.input_size(model))))
    return counter.get_total_flops() // 2


def uniform_plan(model, name: str, criterion: str = "l2", **ratios) -> snp_core.Plan:
    adapter = snp_core.adapter_for(model, name)
    return snp_core.make_plan(model, name, snp_core.ratios.uniform(adapter.groups(), **ratios),
                              snp_core.get_criterion(criterion))


def tiny_sweep_toml(store_dir, artifacts, devices: str, *, iterations: int = 5, min_seconds: float = 0.0,
                    timeout: float = 120, grace: float = 30, tiny_extra: str = "", cold_start: bool = False) -> str:
    """bench.toml text for a real sweep of a 2-block 64x64 DeiT-T and its l2-pruned version.

    The same code paths as a full DeiT sweep, in seconds; `devices` is appended as
    given and `tiny_extra` lines go into the original model's table (label, top1).
    `cold_start` is off unless a test asks: each cold start is one more process
    per model importing its runtime (torch: seconds), and only the tests of cold
    start need it.
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
batch_size = [1]

[measure]
warmup_iterations = 3
iterations = {iterations}
min_seconds = {min_seconds}
timeout_s = {timeout}
grace_s = {grace}
cold_start = {str(cold_start).lower()}
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


def local_device(name: str, workdir: Path, python: str = sys.executable, label: str = "") -> str:
    label_line = f"label = {json.dumps(label)}\n" if label else ""
    return f"""
[devices.{name}]
kind = "local"
{label_line}python = "{python}"
workdir = {json.dumps(str(workdir))}
runtimes = {{ onnxruntime = {{ threads = 1 }}, torch = {{ threads = 1 }} }}
"""


def load_agent(module_name: str):
    """Import devices/agent.py from its path under `module_name`, the way nothing else in the project may
    (on a device it is a standalone file)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "devices" / "agent.py"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def onnx_job(path: str, sha256: str, shape: list[int], **overrides) -> dict:
    """A one-member protocol-2 agent job (devices/agent.py) timing a tiny .onnx with onnxruntime, 1 thread."""
    job = {"protocol": 2, "job_id": "test-job",
           "members": [{"id": "tiny", "artifact": {"path": path, "sha256": sha256, "format": "onnx"},
                        "input": {"shape": list(shape), "dtype": "float32"}}],
           "runtime": "onnxruntime", "options": {"threads": 1}, "warmup": {"iterations": 2},
           "measure": {"iterations": 10, "min_seconds": 0}, "rounds": 2, "timeout_s": 60}
    job.update(overrides)
    return job


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:  # noqa: ANN001 - pytest's capsys
    """``python -m bench ARGV`` in this process: (exit status, stdout, stderr).

    The same code path as the subprocess (`bench.cli.main`) without a fresh interpreter importing torch and
    timm each time; an unexpected exception escapes and fails the test (what "never a traceback" means)."""
    from bench import cli

    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    return code, out, err

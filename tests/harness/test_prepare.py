"""harness.prepare: one artifact per (model, format, batch, target), the target read from the device's runtime.

A torch device with ``device = "cuda"`` gets a .pt traced with the CUDA attention
kernel, a CPU device the CPU one (`exporters.pipeline.attention_kernel`); ONNX is
one graph for every provider. No GPU is needed: only the export is exercised.
"""

from __future__ import annotations

from pathlib import Path

from harness import config as harness_config
from harness.jobs import plan_jobs
from harness.prepare import artifact_targets, export_all
from helpers import tiny_sweep_toml

DEVICES = """
[devices.box]
kind = "local"
runtimes = { onnxruntime = { threads = 1 }, torch = { threads = 1 } }

[devices.gpu]
kind = "local"
runtimes = { torch = { device = "cuda" } }
"""


def test_cuda_torch_devices_get_their_own_traced_artifact(tmp_path: Path) -> None:
    toml = tmp_path / "bench.toml"
    toml.write_text(tiny_sweep_toml(tmp_path, tmp_path / "artifacts", DEVICES))
    cfg = harness_config.load(toml)
    models = [cfg.models["tiny"], cfg.models["tiny_snp"]]
    jobs = plan_jobs(models, list(cfg.devices.values()), ["onnx", "torchscript"], [1])
    targets = artifact_targets(jobs)
    assert targets == {"onnx": ["cpu"], "torchscript": ["cpu", "cuda"]}
    assert {(j.device.name, j.fmt, j.target) for j in jobs} == {
        ("box", "onnx", "cpu"), ("box", "torchscript", "cpu"), ("gpu", "torchscript", "cuda")}

    artifacts = export_all(models, ["onnx", "torchscript"], [1], cfg.artifacts, cfg.models, targets=targets)
    assert set(artifacts) == {(m.name, fmt, 1, t) for m in models for fmt, ts in targets.items() for t in ts}
    assert all(job.artifact_key in artifacts for job in jobs)
    kernels = {key: art.manifest["options"]["attention_kernel"] for key, art in artifacts.items()}
    assert kernels[("tiny_snp", "torchscript", 1, "cpu")] == "explicit"
    assert kernels[("tiny_snp", "torchscript", 1, "cuda")] == "sdpa"
    assert kernels[("tiny_snp", "onnx", 1, "cpu")] == "explicit"
    assert kernels[("tiny", "torchscript", 1, "cuda")] is None  # timm's own attention: nothing to choose
    cpu, cuda = (artifacts[("tiny_snp", "torchscript", 1, t)] for t in ("cpu", "cuda"))
    assert cpu.path != cuda.path

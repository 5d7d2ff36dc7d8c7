"""The manifest: one JSON document beside every artifact saying what it is.

Downstream stages never look inside an artifact: the sweep reads the input
shape, MACs and params from here, the transports ship the file by its sha256,
and result records copy the parity error and versions. So the manifest must be
complete on its own and describe exactly the bytes beside it.

Fields (all present; ``null`` where they do not apply)::

    schema               "snp-export-manifest/1"
    format               torchscript | pt2 | onnx | trt (what was asked for)
    artifact_format      the file's own format (trt -> onnx)
    file                 file name inside the artifact folder
    sha256, size_bytes   of that file
    input_shape, input_dtype, dynamic_batch, input_name, output_names
    opset                onnx/trt only
    exporter             the exporting function and torch version
    onnx_exporter        onnx/trt only: "dynamo" or "torchscript"; exporter_fallback_reason
    external_data_files  onnx/trt only: files the .onnx needs beside it (only for models > 2 GB)
    versions             torch, timm, onnx, onnxscript, onnxruntime, numpy, python
    params               parameter count of the module
    macs                 multiply-accumulates of ONE image (snp_core.count_macs), macs_per_batch = x batch
    plan_macs            the plan's MACs for the pruned widths (null for an original model)
    parity               max_abs_diff, runtime, tolerance, batch_sizes, input
    source, variant      e.g. "deit_tiny_patch16_224", "snp:deit_tiny" / "original"
    plan_id              sha256 of the plan.json content (null for an original model)
    options              the export options that are part of the cache key
    cache_key            full sha256 cache key
    engine_built_on_device  true for trt: the device agent builds the TensorRT engine from the .onnx
    op_histogram, nodes, graph_check   onnx/trt only (see onnx_export.inspect_graph)
    export_seconds, created
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

MANIFEST_FILE = "manifest.json"
SCHEMA = "snp-export-manifest/1"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _version(module: str) -> str | None:
    try:
        return str(__import__(module).__version__)
    except Exception:  # not installed (or broken): recorded as null, not fatal
        return None


def library_versions() -> dict[str, str | None]:
    """Versions of everything that shapes an artifact or its parity check."""
    return {name: _version(name) for name in ("torch", "timm", "onnx", "onnxscript", "onnxruntime", "numpy")} | {
        "python": platform.python_version()}


def plan_id(plan: object) -> str | None:
    """The plan's fingerprint (``snp_core.Plan.fingerprint``), or None for an original model.

    The fingerprint leaves out the plan's creation time, so the same pruning done
    twice has the same id and the export cache is hit; a path is read as the
    plan.json it names (or the one in that folder).
    """
    if plan is None:
        return None
    if isinstance(plan, (str, os.PathLike)):
        from snp_core.plan import Plan

        plan = Plan.read(Path(plan))
    fingerprint = getattr(plan, "fingerprint", None)
    if fingerprint is None:
        raise TypeError(f"plan must be a snp_core.Plan, a plan.json path or None, not {type(plan).__name__}")
    return fingerprint()


def write(manifest: dict, path: Path) -> None:
    path.write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n")


def read(path: Path) -> dict | None:
    """The manifest at `path`, or None when it is missing or not valid JSON (a broken cache entry)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) and doc.get("schema") == SCHEMA else None

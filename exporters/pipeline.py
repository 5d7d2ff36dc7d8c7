"""`export`: from an ``nn.Module`` to a checked, cached artifact with its manifest.

Order of work, and why:

1. validate the request (format, shape, options) -- cheap errors first;
2. compute the cache key and return an intact cached entry without touching
   any exporter (or even running the model);
3. otherwise export into a private staging folder, load the file back the way a
   device would and compare it with eager PyTorch (`parity.check`), inspect the
   ONNX graph, write the manifest last, and publish the folder with one rename.
   Any failure raises `ExportError` and leaves nothing in the cache.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence, Union

from torch import nn

import formats

from . import cache, onnx_export, parity, pt2, torchscript
from . import manifest as manifests
from .errors import ExportError, first_line

if TYPE_CHECKING:
    import snp_core

log = logging.getLogger(__name__)

#: The formats `export` makes, from the shared registry (`formats.FORMATS`: file extension, agent format).
FORMATS = tuple(formats.FORMATS)
#: What an artifact is made for: the device type its runtime computes on (a torch ``device`` option).
TARGETS = ("cpu", "cuda")


def attention_kernel(fmt: str, target: str) -> str:
    """The `snp_core.PrunedAttention` kernel an artifact of `fmt` for `target` is traced with, and why.

    A trace bakes the kernel into the artifact, so it is chosen for where the artifact
    runs, not where it is made (measured: docs/efficiency.md). A .pt/.pt2 for CUDA
    holds scaled-dot-product attention on the pruned widths, which CUDA's fused kernels
    take. Everything else holds the explicit matmul-softmax-matmul: the ONNX runtimes
    fuse it themselves, and on a CPU SDPA with unequal widths takes a generic path ~2x
    slower, while zero-padding to equal widths ("sdpa_padded", CPU's flash kernel)
    won 4 % at one thread on DeiT-T but lost up to 9 % at two threads on DeiT-S/B.
    """
    if formats.FORMATS[fmt].agent_format != "onnx" and target == "cuda":
        return "sdpa"
    return "explicit"


@dataclass
class Artifact:
    """One exported file, its sha256 and manifest; `cached` is True when no export ran."""

    path: Path
    format: str
    sha256: str
    manifest: dict
    manifest_path: Path
    cached: bool


@contextlib.contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    """Export in eval mode (dropout off) and give the caller's model back in its own mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _check_request(model: nn.Module, fmt: str, input_shape: Sequence[int], opset: int,
                   onnx_exporter: str) -> tuple[int, ...]:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if not isinstance(model, nn.Module):
        raise ExportError(f"export needs a torch.nn.Module, not {type(model).__name__}")
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if not shape or any(d < 1 for d in shape) or shape != tuple(input_shape):
        raise ExportError(f"input_shape must be positive integers (batch first), got {input_shape!r}")
    if formats.FORMATS[fmt].agent_format == "onnx":
        if not isinstance(opset, int) or opset < 7:
            raise ExportError(f"opset must be an integer >= 7, got {opset!r}")
        if onnx_exporter not in onnx_export.ONNX_EXPORTERS:
            raise ExportError(f"unknown onnx exporter {onnx_exporter!r}; "
                              f"choose one of: {', '.join(onnx_export.ONNX_EXPORTERS)}")
    devices = {t.device.type for t in list(model.parameters()) + list(model.buffers())}
    if devices - {"cpu"}:
        raise ExportError(f"export expects a CPU model (found tensors on {', '.join(sorted(devices))}); "
                          "call model.cpu() first: artifacts are traced on CPU and moved with map_location on devices")
    return shape


def _has_pruned_attention(model: nn.Module) -> bool:
    import snp_core

    return any(isinstance(m, snp_core.PrunedAttention) for m in model.modules())


def _macs(model: nn.Module, shape: tuple[int, ...]) -> int | None:
    """MACs of one sample (snp_core's paper-style count); None for inputs it cannot count."""
    import snp_core

    try:
        return int(snp_core.count_macs(model, shape[1:]))
    except Exception as exc:  # a custom module count_macs cannot drive: record null, do not fail the export
        log.debug("count_macs failed: %s", first_line(exc))
        return None


def _plan_labels(plan: object) -> tuple[str | None, int | None]:
    """(plan id, the plan's pruned MACs) of a Plan, a plan.json path (or its folder), or None."""
    if plan is None:
        return None, None
    import snp_core

    try:
        if isinstance(plan, (str, os.PathLike)):  # the id is the file's own bytes, whoever wrote it
            path, plan = plan, snp_core.Plan.read(Path(plan))
            pid = manifests.plan_id(path)
        elif isinstance(plan, snp_core.Plan):
            pid = manifests.plan_id(plan)
        else:
            raise TypeError(f"plan must be a snp_core.Plan, a plan.json path or None, not {type(plan).__name__}")
        pruned = (plan.macs or {}).get("pruned")
        return pid, None if pruned is None else int(pruned)
    except (TypeError, OSError, snp_core.SNPError) as exc:
        raise ExportError(f"bad plan: {first_line(exc)}") from None


def export(model: nn.Module, fmt: str, cache_dir: Path, *, input_shape: Sequence[int] = (1, 3, 224, 224),
           opset: int = 17, dynamic_batch: bool = False, source: str = "", variant: str = "original",
           plan: Union["snp_core.Plan", str, "os.PathLike[str]", None] = None,
           onnx_exporter: str = "auto", target: str = "cpu") -> Artifact:
    """Export `model` as `fmt` into the content-addressed cache under `cache_dir`; see the package docstring.

    `plan` (the pruning plan of a pruned model, or its plan.json path) only labels the
    artifact: its sha256 is the manifest's ``plan_id`` and its MACs ``plan_macs``.
    `onnx_exporter` picks the ONNX exporter for onnx/trt ("auto": dynamo, TorchScript
    exporter as fallback). `target` ("cpu" or "cuda") is where the artifact will run: it
    picks the pruned attention's kernel (`attention_kernel`). Raises `ExportError` (one
    line) on any failure.
    """
    shape = _check_request(model, fmt, input_shape, opset, onnx_exporter)
    if target not in TARGETS:
        raise ExportError(f"unknown export target {target!r}; choose one of: {', '.join(TARGETS)}")
    import snp_core

    kernel = attention_kernel(fmt, target) if _has_pruned_attention(model) else None
    cache_dir = Path(cache_dir)
    is_onnx = formats.FORMATS[fmt].agent_format == "onnx"
    label = source or type(model).__name__
    options = {"input_shape": list(shape), "input_dtype": "float32", "dynamic_batch": bool(dynamic_batch),
               "opset": opset if is_onnx else None, "onnx_exporter": onnx_exporter if is_onnx else None,
               "target": None if is_onnx else target, "attention_kernel": kernel}
    versions = manifests.library_versions()
    key_versions = {k: versions[k] for k in (("torch", "timm", "onnx", "onnxscript", "onnxruntime") if is_onnx
                                             else ("torch", "timm"))}
    pid, plan_macs = _plan_labels(plan)
    labels = {"source": source, "variant": variant, "plan_id": pid}
    key = cache.cache_key(model, fmt, options, {"versions": key_versions, "labels": labels})

    hit = cache.lookup(cache_dir, key)
    if hit is not None:
        return _artifact(*hit, fmt, cached=True)
    cache.discard(cache_dir, key)  # a broken or foreign entry in the way (no-op when there is none)

    traced_with = snp_core.attention_kernel(model, kernel) if kernel else contextlib.nullcontext()
    with _eval(model), traced_with, cache.staging(cache_dir, key) as tmp:
        started = time.perf_counter()
        path = tmp / f"model.{formats.FORMATS[fmt].extension}"
        # Traced on one input, checked on others: a branch or value baked in at trace time shows up.
        # Dynamic batch is traced at batch >= 2 (a size-1 dim gets specialised) and checked at a second size.
        trace_shape = (max(2, shape[0]), *shape[1:]) if dynamic_batch else shape
        example = parity.example_input(trace_shape, seed=parity.TRACE_SEED)
        checks = [parity.example_input(shape)]
        if dynamic_batch:
            checks.append(parity.example_input((shape[0] + 2, *shape[1:]), seed=parity.INPUT_SEED + 1))

        if is_onnx:
            entries = onnx_export.export_onnx(model, example, path, opset=opset, dynamic_batch=dynamic_batch,
                                              exporter=onnx_exporter, label=label)
        elif fmt == "torchscript":
            entries = torchscript.export_torchscript(model, example, path, label=label)
        else:
            entries = pt2.export_pt2(model, example, path, dynamic_batch=dynamic_batch, label=label)
        export_seconds = time.perf_counter() - started
        runner = onnx_export.runner if is_onnx else torchscript.runner if fmt == "torchscript" else pt2.runner
        try:
            run, runtime = runner(path)
            result = parity.check(model, checks, run, label=label, fmt=fmt, runtime=runtime)
        except ExportError:
            raise
        except Exception as exc:  # the artifact does not load or run: as bad as a wrong answer
            raise ExportError(f"{fmt} export of {label!r} does not load or run back: {first_line(exc)}") from None
        del run

        params = sum(p.numel() for p in model.parameters())
        macs = _macs(model, shape)
        graph = {"op_histogram": None, "nodes": None, "graph_check": None}
        if is_onnx:
            import onnx

            graph = onnx_export.inspect_graph(onnx.load(str(path)), params)
            if plan is not None and not graph["graph_check"]["clean"]:
                log.warning("onnx graph of pruned %s is not clean: %s", label, graph["graph_check"])
        doc = {
            "schema": manifests.SCHEMA,
            "format": fmt,
            "artifact_format": formats.FORMATS[fmt].agent_format,
            "file": path.name,
            "sha256": manifests.sha256_file(path),
            "size_bytes": path.stat().st_size,
            "input_shape": list(shape),
            "input_dtype": "float32",
            "dynamic_batch": bool(dynamic_batch),
            "input_name": entries.get("input_name"),
            "output_names": entries.get("output_names"),
            "opset": entries.get("opset"),
            "exporter": entries["exporter"],
            "onnx_exporter": entries.get("onnx_exporter"),
            "exporter_fallback_reason": entries.get("exporter_fallback_reason"),
            "external_data_files": entries.get("external_data_files", []),
            "versions": versions,
            "params": params,
            "macs": macs,
            "macs_per_batch": None if macs is None else macs * shape[0],
            "plan_macs": plan_macs,
            "parity": result,
            "source": source,
            "variant": variant,
            "plan_id": pid,
            "options": options,
            "cache_key": key,
            "engine_built_on_device": formats.FORMATS[fmt].built_on_device,
            **graph,
            "export_seconds": round(export_seconds, 3),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        manifests.write(doc, tmp / manifests.MANIFEST_FILE)
        if not cache.publish(tmp, cache_dir, key):
            hit = cache.lookup(cache_dir, key)  # a concurrent export of the same key finished first
            if hit is not None:
                return _artifact(*hit, fmt, cached=True)
            cache.discard(cache_dir, key)
            if not cache.publish(tmp, cache_dir, key):
                raise ExportError(f"cannot publish {fmt} artifact of {label!r} into {str(cache_dir)!r}")
    folder = cache.entry_dir(cache_dir, key)
    return _artifact(folder, doc, fmt, cached=False)


def _artifact(folder: Path, doc: dict, fmt: str, *, cached: bool) -> Artifact:
    return Artifact(path=folder / doc["file"], format=fmt, sha256=doc["sha256"], manifest=doc,
                    manifest_path=folder / manifests.MANIFEST_FILE, cached=cached)

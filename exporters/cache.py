"""Content-addressed artifact cache: an unchanged model is never exported twice.

An export of DeiT-T to ONNX takes seconds, of DeiT-B much longer, and a sweep
asks for the same (model, format, options) again on every run; a re-export would
also produce a new file the transports must re-upload. So artifacts live under

    <cache_dir>/<key[:16]>/model.<ext>        + manifest.json

where the key hashes everything that determines the artifact's bytes:

* every state_dict tensor (name, dtype, shape, raw bytes) in sorted key order,
  plus non-persistent buffers (they change the output but not the state_dict);
* the architecture: the root class, ``repr(model)``, and every submodule's class
  with its plain scalar attributes (``repr`` alone would miss e.g. a pruned
  attention's q/k vs v split or its softmax scale);
* the format and export options (input shape, opset, dynamic batch, exporter);
* the versions of torch, timm and -- for ONNX -- onnx, onnxscript, onnxruntime;
* the labels written into the manifest (source, variant, plan id), so that the
  manifest beside an artifact is always the truth about the request that made
  it. An identical model under another name gets its own entry (same bytes,
  so the devices' sha256-addressed blob store still holds it once);
* `KEY_SCHEMA`, bumped whenever this package changes what it writes.

A half-written artifact must never look cached: an export is staged in a fresh
``.tmp-*`` folder in the cache dir and published by one atomic ``rename`` of the
whole folder, manifest written last; a hit additionally re-checks the file's
size and sha256 against the manifest and discards the entry if they differ.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from .manifest import MANIFEST_FILE, read, sha256_file

#: Bump when the exporters change the bytes they write for the same inputs.
KEY_SCHEMA = "snp-export-key/1"
PREFIX_LEN = 16


def _plain(value: object) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, (tuple, list)) and all(_plain(v) for v in value)


def structure(model: nn.Module) -> str:
    """A string that changes whenever the module tree or a module's scalar configuration does."""
    lines = [f"{type(model).__module__}.{type(model).__qualname__}", repr(model)]
    for name, module in model.named_modules():
        attrs = sorted((k, v) for k, v in vars(module).items()
                       if not k.startswith("_") and k != "training" and _plain(v))
        lines.append(f"{name}|{type(module).__module__}.{type(module).__qualname__}|{attrs!r}")
    return "\n".join(lines)


def _tensors(model: nn.Module) -> dict[str, object]:
    state: dict[str, object] = dict(model.state_dict())
    for name, buf in model.named_buffers():
        state.setdefault(f"<buffer>{name}", buf)
    return state


def cache_key(model: nn.Module, fmt: str, options: dict, context: dict) -> str:
    """sha256 hex key of (weights, architecture, format, options, versions/labels in `context`)."""
    digest = hashlib.sha256()
    digest.update(KEY_SCHEMA.encode() + b"\n")
    digest.update(json.dumps({"format": fmt, "options": options, "context": context}, sort_keys=True).encode() + b"\n")
    digest.update(structure(model).encode() + b"\n")
    state = _tensors(model)
    for name in sorted(state):
        value = state[name]
        if not isinstance(value, torch.Tensor):  # extra_state objects
            digest.update(f"{name}|{value!r}\n".encode())
            continue
        t = value.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        if t.numel():
            digest.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def entry_dir(cache_dir: Path, key: str) -> Path:
    return cache_dir / key[:PREFIX_LEN]


def lookup(cache_dir: Path, key: str) -> tuple[Path, dict] | None:
    """(folder, manifest) of a complete, intact cache entry for `key`, else None."""
    folder = entry_dir(cache_dir, key)
    manifest = read(folder / MANIFEST_FILE)
    if manifest is None or manifest.get("cache_key") != key or not isinstance(manifest.get("file"), str):
        return None
    path = folder / manifest["file"]
    try:
        if path.stat().st_size != manifest.get("size_bytes") or sha256_file(path) != manifest.get("sha256"):
            return None
    except OSError:
        return None
    if not all((folder / name).is_file() for name in manifest.get("external_data_files") or []):
        return None
    return folder, manifest


def discard(cache_dir: Path, key: str) -> None:
    """Remove a broken entry: renamed away first, so nobody can read it half-deleted."""
    folder = entry_dir(cache_dir, key)
    if not folder.exists():
        return
    trash = Path(tempfile.mkdtemp(prefix=f".trash-{key[:PREFIX_LEN]}-", dir=cache_dir))
    try:
        os.rename(folder, trash / "entry")
    except OSError:
        pass  # someone else removed or replaced it
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def staging(cache_dir: Path, key: str) -> Iterator[Path]:
    """A fresh private folder in `cache_dir` (same filesystem, so `publish` is one rename); removed on exit."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:PREFIX_LEN]}-", dir=cache_dir))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, cache_dir: Path, key: str) -> bool:
    """Atomically make the staged folder the entry for `key`; False if an entry already exists there."""
    for entry in tmp.iterdir():  # durable before visible: a crash after rename leaves whole files
        with open(entry, "rb") as f:
            os.fsync(f.fileno())
    try:
        os.rename(tmp, entry_dir(cache_dir, key))
    except OSError:  # ENOTEMPTY/EEXIST: a concurrent export won the race, or a broken entry is in the way
        return False
    return True

"""TorchScript artifacts (``.pt``): what the paper's Xeon and RTX 3090 columns time.

Traced, not scripted: timm models are not fully scriptable, and a trace records
exactly the eager ops a forward pass runs (on CPU: the pruned attention's
explicit matmul-softmax-matmul path). ``torch.jit.freeze`` then inlines the
weights as constants and folds what it can, so the device needs nothing but
``torch`` -- no timm, no snp_core, no pickled classes -- to ``torch.jit.load``
it. ``optimize_for_inference`` is deliberately NOT applied: it rewrites the
graph for the exporting host's backend (e.g. MKLDNN layouts), and the artifact
must run unchanged on other CPUs and on CUDA (``map_location``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .errors import ExportError, first_line
from .parity import to_numpy


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, *, label: str) -> dict:
    """Trace `model` on `example`, freeze, save to `path`; return manifest entries."""
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # TracerWarnings about Python branches: parity catches real problems
            traced = torch.jit.trace(model, example, check_trace=False)
            frozen = torch.jit.freeze(traced)
            torch.jit.save(frozen, str(path))  # FutureWarning in torch 2.14: TorchScript is deprecated, still works
    except Exception as exc:  # every tracer/freezer failure means the same: no artifact
        raise ExportError(f"torchscript export of {label!r} failed: {first_line(exc)}") from None
    return {"exporter": f"torch.jit.trace + torch.jit.freeze (torch {torch.__version__})"}


def runner(path: Path) -> tuple[Callable[[torch.Tensor], list[np.ndarray]], str]:
    """Load the saved file the way a device does and return (run, runtime name) for parity."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")

    @torch.inference_mode()
    def run(x: torch.Tensor) -> list[np.ndarray]:
        return to_numpy(loaded(x))

    return run, f"torch {torch.__version__} torch.jit.load (CPU)"

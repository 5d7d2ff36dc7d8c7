"""torch.export artifacts (``.pt2``): the successor of TorchScript, offered as an option.

``torch.export.save`` writes an ExportedProgram (ATen graph + weights) that
``torch.export.load`` rebuilds with only ``torch`` installed (torch >= 2.1 on the
device; the format is tied to the torch version more tightly than TorchScript).

A dynamic batch dimension is traced with an example batch of at least 2:
torch.export specialises a size-1 dimension to the constant 1, so tracing at
batch 1 would silently make the "dynamic" program batch-1 only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .errors import ExportError, first_line
from .parity import to_numpy


def export_pt2(model: nn.Module, example: torch.Tensor, path: Path, *, dynamic_batch: bool, label: str) -> dict:
    """``torch.export.export`` + ``torch.export.save`` to `path`; return manifest entries."""
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)
        torch.export.save(program, str(path))
    except Exception as exc:  # torch.export raises many types; all mean "no artifact"
        raise ExportError(f"pt2 export of {label!r} failed: {first_line(exc)}") from None
    return {"exporter": f"torch.export.export (torch {torch.__version__})"}


def runner(path: Path) -> tuple[Callable[[torch.Tensor], list[np.ndarray]], str]:
    """Load the saved program the way a device does and return (run, runtime name) for parity."""
    module = torch.export.load(str(path)).module()

    @torch.inference_mode()
    def run(x: torch.Tensor) -> list[np.ndarray]:
        return to_numpy(module(x))

    return run, f"torch {torch.__version__} torch.export.load (CPU)"

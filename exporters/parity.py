"""Comparing an artifact's outputs with eager PyTorch on the same random input.

An exported program can silently differ from the module it came from: Python
state or data-dependent branches get baked in at trace time, an operator is
lowered differently, an opset conversion goes wrong. Latency numbers of a
program that computes something else are worthless, so every export runs the
artifact once and compares it with eager PyTorch before it is cached.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .errors import ExportError

#: Largest accepted max-abs difference between artifact and eager outputs (float32 logits).
TOLERANCE = 1e-3
#: Seed of the random parity inputs, so a manifest's parity figure is reproducible.
INPUT_SEED = 0
#: Seed of the example input a model is traced / exported with (deliberately not a parity input).
TRACE_SEED = 1234


def example_input(shape: Sequence[int], seed: int = INPUT_SEED) -> torch.Tensor:
    """A standard-normal float32 tensor of `shape`, the same for the same seed on every host."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32)


def to_numpy(outputs: object) -> list[np.ndarray]:
    """Flatten a tensor / array or a (nested) tuple, list or dict of them into float arrays."""
    if isinstance(outputs, torch.Tensor):
        return [outputs.detach().cpu().float().numpy()]
    if isinstance(outputs, np.ndarray):
        return [outputs.astype(np.float32, copy=False)]
    if isinstance(outputs, dict):
        return [a for key in sorted(outputs) for a in to_numpy(outputs[key])]
    if isinstance(outputs, (list, tuple)):
        return [a for item in outputs for a in to_numpy(item)]
    raise ExportError(f"cannot compare an output of type {type(outputs).__name__} (expected tensors)")


@torch.inference_mode()
def eager_outputs(model: nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    """The reference: the module itself, in eval mode, without autograd."""
    return to_numpy(model(x))


def max_abs_diff(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    """Largest absolute elementwise difference; inf when structure or shapes differ or a NaN appears."""
    if len(reference) != len(candidate):
        return math.inf
    worst = 0.0
    for ref, got in zip(reference, candidate):
        if ref.shape != got.shape:
            return math.inf
        if ref.size == 0:
            continue
        diff = float(np.max(np.abs(ref.astype(np.float64) - got.astype(np.float64))))
        if math.isnan(diff):
            return math.inf
        worst = max(worst, diff)
    return worst


def check(model: nn.Module, inputs: Iterable[torch.Tensor], run: Callable[[torch.Tensor], list[np.ndarray]],
          *, label: str, fmt: str, runtime: str, tolerance: float = TOLERANCE) -> dict:
    """Run the artifact (`run`) and eager PyTorch on every input; raise ExportError past `tolerance`.

    Returns the manifest's ``parity`` entry.
    """
    worst, batches = 0.0, []
    for x in inputs:
        diff = max_abs_diff(eager_outputs(model, x), run(x))
        worst = max(worst, diff)
        batches.append(int(x.shape[0]) if x.dim() else 1)
    if not worst <= tolerance:
        raise ExportError(f"{fmt} export of {label!r} failed parity: max abs diff {worst:.3e} between {runtime} "
                          f"and eager PyTorch exceeds {tolerance:g}")
    return {"max_abs_diff": worst, "runtime": runtime, "tolerance": tolerance, "batch_sizes": batches,
            "input": f"torch.randn, seed {INPUT_SEED}"}

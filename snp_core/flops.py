"""Counting MACs and parameters the way the paper does.

The paper's GFLOPs are multiply-accumulates of the matrix products only
(docs/method.md §7.1): patch embedding, qkv, q·kᵀ, attn·v, proj, fc1, fc2 and head.
Norms, softmax, GELU, adds and biases are not counted. `count_macs` runs one
forward pass with hooks on the modules that do those products: every
``nn.Linear`` and ``nn.Conv2d``, plus the attention modules that adapters register
with `register_attention` (their q·kᵀ and attn·v matmuls live inside the module).
The test suite checks this against ``torch.utils.flop_counter.FlopCounterMode``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

AttentionMacs = Callable[[nn.Module, torch.Tensor], int]
_ATTENTION: dict[type, AttentionMacs] = {}


def register_attention(cls: type, macs: AttentionMacs) -> None:
    """Count `macs(module, input)` for every `cls` module: its q·kᵀ and attn·v products."""
    _ATTENTION[cls] = macs


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.inference_mode()
def count_macs(model: nn.Module, input_size: tuple[int, ...] | None = None) -> int:
    """MACs of one forward pass for ONE image of `input_size` (C, H, W)."""
    if input_size is None:
        from .models import input_size as model_input_size

        input_size = model_input_size(model)
    total = 0

    def linear(m: nn.Linear, args, out) -> None:
        nonlocal total
        total += math.prod(args[0].shape[:-1]) * m.in_features * m.out_features

    def conv(m: nn.Conv2d, args, out) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() * (m.in_channels // m.groups) * kh * kw

    def attention(m: nn.Module, args, out) -> None:
        nonlocal total
        total += _ATTENTION[type(m)](m, args[0])

    hooks = []
    for module in model.modules():
        if isinstance(module, nn.Linear):
            hooks.append(module.register_forward_hook(linear))
        elif isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(conv))
        elif type(module) in _ATTENTION:
            hooks.append(module.register_forward_hook(attention))
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros(1, *input_size))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return total

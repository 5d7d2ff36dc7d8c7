"""In-place slicing of layers to kept indices: the model really gets smaller.

Each helper replaces a module's parameters by the kept slices and updates the
attributes its forward reads (``in_features``, ``normalized_shape``, ...), so the
pruned model has no masks, padding or index_select at run time.
"""

from __future__ import annotations

import torch
from torch import nn


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone().contiguous())


def slice_linear(layer: nn.Linear, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None) -> None:
    """Keep rows `out_idx` (output neurons) and columns `in_idx` (input features)."""
    weight = layer.weight
    if out_idx is not None:
        weight = weight[out_idx]
        if layer.bias is not None:
            layer.bias = _param(layer.bias[out_idx])
        layer.out_features = len(out_idx)
    if in_idx is not None:
        weight = weight[:, in_idx]
        layer.in_features = len(in_idx)
    layer.weight = _param(weight)


def slice_conv_out(conv: nn.Conv2d, out_idx: torch.Tensor) -> None:
    """Keep output channels `out_idx` of a (non-grouped) convolution."""
    conv.weight = _param(conv.weight[out_idx])
    if conv.bias is not None:
        conv.bias = _param(conv.bias[out_idx])
    conv.out_channels = len(out_idx)


def slice_conv_in(conv: nn.Conv2d, in_idx: torch.Tensor) -> None:
    """Keep input channels `in_idx` of a (non-grouped) convolution."""
    conv.weight = _param(conv.weight[:, in_idx])
    conv.in_channels = len(in_idx)


def slice_batchnorm(norm: nn.BatchNorm2d, idx: torch.Tensor) -> None:
    """Keep channels `idx` of a BatchNorm: affine parameters and running statistics.

    Unlike LayerNorm, an eval-mode BatchNorm is a per-channel affine map, so slicing
    it is exact: the kept channels compute what they computed before.
    """
    norm.num_features = len(idx)
    if norm.weight is not None:
        norm.weight = _param(norm.weight[idx])
    if norm.bias is not None:
        norm.bias = _param(norm.bias[idx])
    if norm.running_mean is not None:
        norm.running_mean = norm.running_mean[idx].clone()
        norm.running_var = norm.running_var[idx].clone()


def slice_norm(norm: nn.Module, idx: torch.Tensor) -> None:
    """Keep channels `idx` of a LayerNorm (affine or not); an Identity is left alone.

    LayerNorm then normalises over fewer channels, so its statistics change; SNP
    leaves that to fine-tuning (docs/method.md §5, "nn.LayerNorm handling").
    """
    if isinstance(norm, nn.Identity):
        return
    if not isinstance(norm, nn.LayerNorm):
        raise TypeError(f"cannot slice a {type(norm).__name__}")
    norm.normalized_shape = (len(idx),)
    if norm.weight is not None:
        norm.weight = _param(norm.weight[idx])
    if norm.bias is not None:
        norm.bias = _param(norm.bias[idx])


def slice_last_dim(param: nn.Parameter, idx: torch.Tensor) -> nn.Parameter:
    """A new parameter keeping `idx` along the last dimension (tokens, LayerScale)."""
    return _param(param[..., idx])

"""Registry of model families snp_core can prune: one adapter file per family."""

from __future__ import annotations

from torch import nn

from ..errors import UnsupportedModelError
from .base import Adapter, Keep
from .efficientformer import EfficientFormerAdapter
from .vit import KERNELS as ATTENTION_KERNELS
from .vit import PrunedAttention, VitAdapter, attention_kernel

ADAPTERS: list[type[Adapter]] = [VitAdapter, EfficientFormerAdapter]


def adapter_for(model: nn.Module, model_name: str = "") -> Adapter:
    """The adapter for `model`, or an error naming the supported families."""
    for cls in ADAPTERS:
        if cls.claims(model):
            return cls(model)
    supported = "; ".join(cls.covers for cls in ADAPTERS)
    raise UnsupportedModelError(
        f"unsupported model family for {model_name or 'model'!r} ({type(model).__name__}); supported: {supported}"
    )


__all__ = ["ADAPTERS", "ATTENTION_KERNELS", "Adapter", "EfficientFormerAdapter", "Keep", "PrunedAttention", "VitAdapter", "adapter_for",
           "attention_kernel"]

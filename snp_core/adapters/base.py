"""What an adapter tells the pruner about one model family.

The pruner is family-agnostic: it asks the adapter for the prunable groups, for
the tensors each criterion scores, for the modules whose outputs carry q and k
during calibration, and finally to cut the model to the kept indices. Adding a
model family means writing one subclass in one file and listing it in
``adapters/__init__.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, ClassVar, Sequence

import torch
from torch import nn

from ..groups import Group

#: Indices kept per group: a flat list, or one list per head for per-head kinds.
Keep = dict[str, list]
#: Turns a hooked module's output into (q, k), each [B, H, N, d].
QKExtractor = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Adapter(ABC):
    family: ClassVar[str]
    #: Shown in "unsupported model family" errors: which models this adapter takes.
    covers: ClassVar[str]

    @classmethod
    @abstractmethod
    def claims(cls, model: nn.Module) -> bool:
        """True when `model` belongs to this family (even if some feature is unsupported)."""

    @classmethod
    def check(cls, model: nn.Module) -> None:
        """Raise UnsupportedModelError naming the feature this adapter cannot prune."""

    def __init__(self, model: nn.Module) -> None:
        self.check(model)
        self.model = model

    @abstractmethod
    def groups(self) -> list[Group]:
        """Every prunable group, in a stable order."""

    @abstractmethod
    def qk_sources(self) -> list[tuple[str, nn.Module, QKExtractor]]:
        """(qk group name, module to hook, extractor of q and k from its output)."""

    @abstractmethod
    def qk_weights(self, group: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Query and key projection rows, each [H, d, C]."""

    @abstractmethod
    def value_weights(self, group: str) -> torch.Tensor:
        """Value projection rows [H, d, C]."""

    @abstractmethod
    def hidden_weights(self, group: str) -> torch.Tensor:
        """First MLP layer rows [D, C]."""

    @abstractmethod
    def channel_producers(self, group: str) -> Sequence[torch.Tensor]:
        """Weights of every layer writing the residual stream, output channels first."""

    def head_proj_columns(self, group: str) -> torch.Tensor:
        """For a ``"heads"`` group: each head's output-projection columns ``[H, C, d_v]``."""
        raise NotImplementedError(f"{self.family} has no head groups")

    @abstractmethod
    def apply(self, keep: Keep) -> None:
        """Cut the model in place to the kept indices."""

    @abstractmethod
    def macs(self, widths: dict[str, int]) -> int:
        """MACs for one image when each group keeps `widths[name]` (per head for per-head kinds)."""

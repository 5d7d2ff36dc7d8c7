"""What an adapter tells the pruner about one model family.

The pruner is family-agnostic: it asks the adapter for the prunable groups, for
the tensors each criterion scores, for the modules whose outputs carry q and k
during calibration, and finally to cut the model to the kept indices.

Adding a model family is two edits, both in the library:

1. ``snp_core/adapters/<family>.py``: one `Adapter` subclass that implements every
   abstract method below and names its ``tiny`` model: a small real timm model of
   the family (timm name + create kwargs; seeded random weights, a CPU forward in
   milliseconds). The tiny model is how the family proves itself.
2. Its registration: the class appended to ``ADAPTERS`` in ``adapters/__init__.py``.

No test needs writing for the contract: ``tests/snp_core/test_adapter_contract.py``
is parametrised over ``ADAPTERS`` and checks every family on its tiny model:
exactness at zero ratio and under a shuffled full plan, one neuron of every group
cut by `apply` against the same neuron zeroed by `zero_neuron`, `macs` and
``count_macs`` against torch's FlopCounterMode, ONNX / TorchScript export parity
and the no-gather graph check, and the plan.json + safetensors round trip. What
only the family has (named configs, paper figures, refused features) is tested in
a file of its own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, ClassVar, Sequence

import torch
from torch import nn

from .. import models
from ..groups import Group

#: Indices kept per group: a flat list, or one list per head for per-head kinds.
Keep = dict[str, list]
#: Turns a hooked module's output into (q, k), each [B, H, N, d].
QKExtractor = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Adapter(ABC):
    family: ClassVar[str]
    #: Shown in "unsupported model family" errors: which models this adapter takes.
    covers: ClassVar[str]
    #: A small real timm model of the family, ``(timm name, snp_core.create kwargs)``: every group kind the
    #: family has, a forward well under a second on CPU. The contract tests prune it (`tiny_model`); a
    #: plan made from it rebuilds with `snp_core.load` like any other, since it is a timm name and kwargs.
    tiny: ClassVar[tuple[str, dict]]

    @classmethod
    def tiny_model(cls) -> nn.Module:
        """`tiny` with timm's initialisation under a fixed seed (the same weights every call), in eval mode."""
        name, kwargs = cls.tiny
        return models.create(name, "random", **kwargs)

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

    @abstractmethod
    def zero_neuron(self, group: str, neuron: int | tuple[int, int]) -> None:
        """Zero in place the weights through which one neuron of the uncut model reaches the output.

        `neuron` is ``(head, index)`` for per-head kinds, else an index (a head for ``"heads"``).
        Afterwards the model computes exactly what it computes with that neuron cut by `apply`:
        the contract test checks one against the other, so surgery is checked against a
        reference that slices nothing. Raise NotImplementedError, saying why, for a group
        whose removal no zeroing reproduces (e.g. residual channels a LayerNorm normalises:
        cutting one changes the statistics over the others).
        """


def zero_outputs(module: nn.Module, idx: int | list[int]) -> None:
    """Zero output channels `idx` of a Linear or conv (weight rows and bias), or the affine entries
    of a norm (a BatchNorm then outputs exactly 0 there)."""
    with torch.no_grad():
        module.weight[idx] = 0
        if module.bias is not None:
            module.bias[idx] = 0

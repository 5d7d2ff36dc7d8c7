"""Whole-head importance: which heads of an attention layer to keep (docs/method.md §6).

The paper combines SNP with conventional head pruning for its DeiT-B 3.5 GMACs
model but publishes no head criterion. Two are offered here, as small
interchangeable classes like the neuron criteria in `importance.py`; ``bench
ablation`` compares them (and a random ranking):

* `ProjL1` (default): the L1 norm of the head's columns of the output projection,
  i.e. how strongly the head can write into the residual stream. Data-free, and
  comparable across heads because every head feeds the same projection.
* `QKScoreSum`: the sum of the head's Q/K pair scores from the neuron criterion
  (for SNP: Σ_i ω^h_{as,i}, docs/method.md §6). For SNP this sums cosines to the head's
  top singular components, so it grows with how many components hold the head's
  energy: a measure of how spread the head's attention structure is, not of its
  magnitude.

Heads are removed first; SNP then prunes neurons of the surviving heads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from .errors import SNPError


class HeadImportance(ABC):
    """Scores ``[H]`` for the heads of one attention layer (higher = keep)."""

    name: ClassVar[str]

    @abstractmethod
    def score(self, qk_scores: torch.Tensor, proj_columns: torch.Tensor) -> torch.Tensor:
        """`qk_scores` ``[H, d]``: the neuron criterion's Q/K pair scores; `proj_columns`
        ``[H, C, d_v]``: each head's columns of the output projection."""


class ProjL1(HeadImportance):
    name = "proj_l1"

    def score(self, qk_scores, proj_columns):
        return proj_columns.abs().sum(dim=(1, 2))


class QKScoreSum(HeadImportance):
    name = "qk_sum"

    def score(self, qk_scores, proj_columns):
        return qk_scores.sum(dim=1)


class RandomHeads(HeadImportance):
    """Ablation baseline: a seeded random ranking."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self._generator = torch.Generator().manual_seed(seed)

    def score(self, qk_scores, proj_columns):
        return torch.rand(proj_columns.shape[0], generator=self._generator)


HEAD_CRITERIA: dict[str, type[HeadImportance]] = {cls.name: cls for cls in (ProjL1, QKScoreSum, RandomHeads)}


def get_head_criterion(name: str, **params) -> HeadImportance:
    """A head criterion by name: ``proj_l1``, ``qk_sum`` or ``random``."""
    if name not in HEAD_CRITERIA:
        raise SNPError(f"unknown head criterion {name!r}; known: {', '.join(HEAD_CRITERIA)}")
    return HEAD_CRITERIA[name](**params)

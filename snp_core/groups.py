"""Prunable groups: the unit a ratio applies to.

An adapter describes a model as a list of `Group`s. A group is a set of neurons
that are removed together by one ratio: the query/key pairs of every head of one
attention layer (``kind="qk"``), its value neurons (``"v"``), the hidden neurons
of one MLP (``"ffn"``), the residual-stream channels shared by the whole
network (``"embed"``), or the whole heads of one attention layer (``"heads"``,
conventional head pruning, docs/method.md §6). For per-head kinds, `width` is the width
of ONE head and every head keeps the same count, so the ``(B, N, H, head_dim)``
reshape stays valid (docs/method.md §2.3, "Per-head count"). A per-head group whose
layer also has a ``"heads"`` group names it in `head_group`: its kept lists then
cover only the surviving heads.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import RatioError

KINDS = ("qk", "v", "ffn", "embed", "heads")


@dataclass(frozen=True)
class Group:
    """One prunable group of a model, as its adapter reports it."""

    name: str
    kind: str
    width: int
    heads: int = 1
    head_group: str | None = None

    def kept_width(self, ratio: float, round_to: int | None = None) -> int:
        """Neurons kept (per head for per-head kinds) when `ratio` of them are removed.

        Removed count = ``round(ratio * width)`` as in the paper's ratio files (docs/method.md
        §7.3). With `round_to`, the kept width is then rounded to the nearest multiple
        of it (at least one multiple, at most the full width), because GEMM kernels
        run fastest on widths that fill their tiles. Head counts are never rounded:
        a head is not a GEMM dimension.
        """
        check_ratio(ratio, self.name)
        kept = self.width - round(ratio * self.width)
        if round_to and self.kind != "heads":
            kept = min(self.width, max(round_to, round_to * int(kept / round_to + 0.5)))
        if kept <= 0:
            raise RatioError(
                f"ratio {ratio} for {self.name} removes all {self.width} {'heads' if self.kind == 'heads' else 'neurons'}"
                f"{' of every head' if self.heads > 1 else ''}; use a ratio below "
                f"{(self.width - 0.5) / self.width:.4f}"
            )
        return kept


def check_ratio(ratio: float, what: str) -> None:
    """Reject a ratio outside [0, 1) with a message that names it."""
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0.0 <= ratio < 1.0:
        raise RatioError(
            f"ratio {ratio!r} for {what} is outside [0, 1) (a ratio is the fraction of neurons removed)"
        )

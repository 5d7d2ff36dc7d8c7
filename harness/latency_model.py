"""The latency model behind ``bench compress --target-latency``: pure functions, no device, no store.

* `parse_latency`: a latency target as a user types it, in milliseconds.
* `Curve`: measured median latency against MACs along one ratio *pattern* (the
  pattern scaled by one factor, as ``--target-gmacs`` scales it), fitted
  monotone; it predicts the latency of a MACs count and inverts a target.
* `information_loss`: how much of each group's importance (the criterion's
  scores, e.g. SNP's) a selection of kept neurons leaves out.
* `choose`: among candidate ratio settings, the one that meets the target with
  the least estimated loss.

Why a curve per pattern and not one latency-per-MAC figure: the same MACs cost
different time depending on where they are cut (attention widths, MLP widths
or the residual stream change different kernels), so a pattern's own measured
curve predicts far better than a global slope; between measured points the
curve is linear in MACs, which a GEMM-bound model follows closely.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch

from snp_core.groups import Group

#: Units accepted by `parse_latency`, in milliseconds.
_UNITS_MS = {"ms": 1.0, "s": 1000.0, "us": 1e-3, "µs": 1e-3}
_LATENCY_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|us|µs)?\s*$")


class TargetLatencyError(ValueError):
    """A latency target that cannot be met or understood; the message is one line that says what to do."""


def parse_latency(text: str) -> float:
    """Milliseconds from "30ms", "30 ms", "0.03s", "30000us" or a bare number (ms)."""
    match = _LATENCY_RE.match(str(text))
    value = float(match.group(1)) * _UNITS_MS[match.group(2) or "ms"] if match else 0.0
    if not value > 0:
        raise TargetLatencyError(f"--target-latency {text!r} is not a positive latency; "
                                 "write e.g. 30ms, '30 ms', 0.03s, 30000us or 30 (milliseconds)")
    return value


@dataclass(frozen=True)
class Curve:
    """Median latency (ms) against MACs along one pattern: non-decreasing, linear between points.

    Along one pattern every width only shrinks as MACs fall, so the true latency
    cannot rise; a measured point that does is noise, and left in it would make
    the inverse ambiguous. `fit` therefore pools adjacent violators (isotonic
    regression): such points share their mean, giving a flat stretch.
    """

    macs: tuple[float, ...]
    ms: tuple[float, ...]

    @classmethod
    def fit(cls, points: Iterable[tuple[float, float]]) -> Curve:
        """The monotone curve through (MACs, median ms) points; equal MACs are averaged."""
        by_macs: dict[float, list[float]] = {}
        for macs, ms in points:
            by_macs.setdefault(float(macs), []).append(float(ms))
        if len(by_macs) < 2:
            raise TargetLatencyError(f"a latency curve needs at least two MACs counts, got {len(by_macs)}; "
                                     "re-measure with --reprofile")
        xs = sorted(by_macs)
        blocks: list[list[float]] = []  # [sum of ms, count, number of MACs points pooled]
        for x in xs:
            blocks.append([sum(by_macs[x]), len(by_macs[x]), 1])
            while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
                total, count, width = blocks.pop()
                blocks[-1] = [blocks[-1][0] + total, blocks[-1][1] + count, blocks[-1][2] + width]
        ys = [b[0] / b[1] for b in blocks for _ in range(b[2])]
        return cls(tuple(xs), tuple(ys))

    @property
    def range_ms(self) -> tuple[float, float]:
        return self.ms[0], self.ms[-1]

    def predict(self, macs: float) -> float:
        """Latency at `macs`: linear between the surrounding points, the end segment's slope beyond them."""
        i = 1
        while i < len(self.macs) - 1 and macs > self.macs[i]:
            i += 1
        (x0, x1), (y0, y1) = self.macs[i - 1:i + 1], self.ms[i - 1:i + 1]
        return y0 + (macs - x0) * (y1 - y0) / (x1 - x0)

    def macs_for(self, target_ms: float) -> float | None:
        """The most MACs (least pruning) whose predicted latency is at most `target_ms`; None out of range."""
        if not self.ms[0] <= target_ms <= self.ms[-1]:
            return None
        for i in range(len(self.macs) - 1, 0, -1):
            (x0, x1), (y0, y1) = self.macs[i - 1:i + 1], self.ms[i - 1:i + 1]
            if y0 <= target_ms <= y1:
                return x1 if y1 == y0 else x0 + (target_ms - y0) * (x1 - x0) / (y1 - y0)
        raise AssertionError("unreachable: target inside the range of a monotone curve")  # pragma: no cover


def information_loss(groups: list[Group], scores: Mapping[str, torch.Tensor],
                     keep: Mapping[str, list]) -> dict[str, float]:
    """Per group, the fraction of its score mass that the kept indices leave out (0 = nothing lost).

    Scores are `snp_core.score_groups` output (higher = keep). SNP's are
    non-negative (ω_as sums absolute cosines, redundancy is n − Σ|cos| ≥ 0, and so
    are ℓ2 norms and random draws); a group with a negative score (``reverse``) is
    shifted so its lowest score is 0, which keeps the ranking and makes "mass"
    meaningful. Per-head groups count every head, so heads removed by head
    pruning lose all their neurons' mass. A group whose scores are all equal
    falls back to the fraction of neurons removed.
    """
    loss = {}
    for g in groups:
        s = scores[g.name].double()
        s = s - s.min() if s.min() < 0 else s
        kept = keep[g.name]
        if s.dim() == 2:
            heads = keep[g.head_group] if g.head_group is not None else range(s.shape[0])
            mass = sum(float(s[h, idx].sum()) for h, idx in zip(heads, kept))
            count = sum(len(idx) for idx in kept)
        else:
            mass, count = float(s[kept].sum()), len(kept)
        total = float(s.sum())
        loss[g.name] = 1.0 - (mass / total if total > 0 else count / s.numel())
    return loss


@dataclass
class Candidate:
    """One ratio setting the search considered: where it comes from, its cost and what it loses."""

    pattern: str
    ratios: dict[str, float]
    widths: dict[str, int]
    macs: int
    predicted_ms: float
    loss: dict[str, float] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)  # group name -> kind, for the per-kind means

    @property
    def mean_loss(self) -> float:
        """Average over groups of the score mass removed: the figure the search minimises."""
        return sum(self.loss.values()) / len(self.loss)

    def kind_loss(self, kind: str) -> float | None:
        """Average loss over the groups of one kind (e.g. "qk": attention scores), None when it has none."""
        values = [v for name, v in self.loss.items() if self.kinds.get(name) == kind]
        return sum(values) / len(values) if values else None


def choose(candidates: list[Candidate], target_ms: float) -> Candidate:
    """The candidate predicted to meet the target that loses least; an error when none is."""
    if not candidates:
        raise TargetLatencyError(f"no ratio pattern can reach {target_ms:.3g} ms; raise the target")
    meeting = [c for c in candidates if c.predicted_ms <= target_ms]
    if not meeting:
        closest = min(c.predicted_ms for c in candidates)
        raise TargetLatencyError(f"no ratio setting is predicted to meet {target_ms:.3g} ms (closest: "
                                 f"{closest:.3g} ms); raise the target or re-measure with --reprofile")
    return min(meeting, key=lambda c: c.mean_loss)

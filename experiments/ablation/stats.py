"""Means and 95 % intervals over training seeds, and when a difference between two criteria is called.

Each training seed is one replicate of the whole study (its own trained weights, calibration
images, random ranking and fine-tune data order), so the seeds are the unit of replication:

* a criterion's figure is the mean over seeds with a two-sided 95 % Student-t interval,
  ``mean ± t(0.975, n-1) · sd / √n`` (no interval from one seed);
* two criteria are compared *paired*, seed by seed (both prune the same trained model): the
  interval is that of the per-seed differences, and a difference is called only when that
  interval excludes 0. Paired intervals are narrower than comparing two marginal intervals,
  because most of the seed-to-seed variation (how prunable that model is) cancels.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

from scipy import stats as scipy_stats

#: Coverage of every interval in the report.
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """Mean of `n` values with its 95 % t-interval (``lo``/``hi`` None when n < 2)."""

    mean: float
    lo: float | None
    hi: float | None
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.lo is not None and (self.lo > 0 or self.hi < 0)

    def sign(self) -> int:
        """+1 / -1 when the interval lies above / below 0, else 0 (no call)."""
        if not self.excludes_zero:
            return 0
        return 1 if self.lo > 0 else -1

    def text(self, scale: float = 1.0, digits: int = 1) -> str:
        """``mean [lo, hi]`` scaled and rounded (just the mean for one value)."""
        mean = f"{self.mean * scale:.{digits}f}"
        if self.lo is None:
            return mean
        return f"{mean} [{self.lo * scale:.{digits}f}, {self.hi * scale:.{digits}f}]"


def interval(values: Sequence[float]) -> Interval:
    """The mean of `values` and its 95 % Student-t interval."""
    if not values:
        raise ValueError("no values to average")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Interval(mean, None, None, len(values))
    t = float(scipy_stats.t.ppf(0.5 + LEVEL / 2, len(values) - 1))
    half = t * statistics.stdev(values) / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half, len(values))


def paired(a: dict[int, float], b: dict[int, float]) -> Interval | None:
    """The interval of ``a - b`` over the seeds both have (`a`, `b`: seed → value); None if none shared."""
    seeds = sorted(set(a) & set(b))
    return interval([a[s] - b[s] for s in seeds]) if seeds else None

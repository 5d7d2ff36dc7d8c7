"""Confidence intervals of speedups and latency changes, and whether a speedup can be trusted.

Every interval of the project comes from here: the speedup cells of ``bench
table`` and the exports (:func:`speedup_interval`), the error bars of ``bench
figures``, and the change of a job between two runs in ``bench compare`` /
``bench nightly`` (:func:`change_interval`, classified in ``results.regression``).

The unit of uncertainty: rounds
===============================
Agent protocol 2 times the members of a comparison group (an original and its
pruned models on one device, runtime, format and batch size) in ``R``
interleaved rounds: every round visits every member once, in a shuffled order,
and each sample keeps its round index (``sample_rounds``).  A round is the
stretch of time over which the device's state (clocks, temperature, other
processes, caches) is roughly constant, and both models of a pair see the same
rounds.  So the rounds, not the samples, are the independent units:

* **point** = median of all samples of the original ÷ median of all samples of
  the pruned model (the records' ``median_ms``: the number the table shows).
* **interval** (method ``paired-rounds``): a *paired cluster bootstrap* over the
  rounds both records have.  A resample draws ``K`` of the ``K`` shared rounds
  with replacement, the same draw for both models, and takes each model's median
  of the pooled samples of the drawn rounds (a weighted median: every sample
  weighs as often as its round was drawn; no samples are copied), so a
  resample's ratio is the point estimator itself applied to resampled data.  A
  slow round hits both models' resamples together and cancels in the ratio, as
  it does in the measurement; what is left is the part of the round-to-round
  variation that the two models do *not* share, which is exactly the
  uncertainty of the speedup.
* **small-K correction**: with ``K`` = 5 or 10 clusters the plain percentile
  interval is too narrow (the bootstrap variance of a mean is ``(K-1)/K`` of
  the truth, and normal instead of Student quantiles).  The bounds are the
  hull of two corrected intervals (:func:`_round_bounds`): the *expanded
  percentile interval* (Hesterberg 2015, "What teachers should know about the
  bootstrap", §5: the bootstrap quantiles at ``α'/2, 1-α'/2`` with
  ``Φ⁻¹(1-α'/2) = sqrt(K/(K-1)) · t_{K-1, 1-α/2}``; for K = 10 and 95 % the
  0.85 % and 99.15 % quantiles), which follows skew, and the Student interval
  ``log point ± t_{K-1} · sd* · sqrt(K/(K-1))`` of the bootstrap standard
  deviation ``sd*``, which is smooth where a bootstrap over 5 rounds has lumpy
  tails.
* Below :data:`MIN_ROUNDS` shared rounds no bootstrap over rounds can be
  trusted (with 3 clusters the percentile interval cannot be wider than the
  range of 3 values: it covered 75 % instead of 95 %), and the samples are
  resampled instead (next section).

Calibration (``tests/results/test_intervals.py``; synthetic latencies, no
timing): log-latency = model + a round effect shared by both models (a 5 %
linear drift plus 1 % noise) + a round effect of each model's own (1 %) +
2 % per-sample noise + 1 % heavy-tailed outliers; 10 rounds of 100 samples.

=========================================  ==========  ===========  =============
design (2000 seeds each)                   A/A covers  1.10 found   median width
=========================================  ==========  ===========  =============
10 rounds (the paper profile)              96.4 %      100 %        2.3 %
5 rounds (the quick profile)               97.5 %      100 %        4.1 %
10 rounds, no shared drift                 95.6 %                   2.2 %
10 rounds, no own round effects            99.2 %                   0.7 %
=========================================  ==========  ===========  =============

The test runs 200 seeds of the first design: 191 of 200 (95.5 %) A/A
intervals cover 1.0, and 200 of 200 intervals of a true 1.10 exclude 1.0.
(A calibrated 95 % interval reaches 190 of 200 only 58 % of the time;
this one, at 96.4 %, 89 %.)  The alternatives measured on the same
kind of data: the plain percentile interval of this bootstrap covered 93 %
(10 rounds) and 89 % (5 rounds); the expanded percentile alone 95.9 % and
93-94 %; a bootstrap of the mean per-round log ratio centred on the
pooled-median point 92-94 % (the pooled median varies more than the
per-round ratios when the device drifts); the block bootstrap of samples,
which cannot see rounds, 90 % (10 rounds) and 81 % (5 rounds) without drift.

Two records timed in *different* groups (a resumed run times the missing
members again, in a new group; ``group_key`` differs) share no rounds: their
round ``r`` are unrelated stretches of time.  Their rounds are then resampled
independently, one draw per record (method ``rounds``), the small-K correction
taken for the smaller ``K``.  That is also how ``bench compare`` treats the
same job in two runs.

Records without rounds (made before schema 4, or by protocol 1)
================================================================
A record without ``sample_rounds`` counts as one round holding every sample
(:func:`round_medians`).  Its interval (method ``blocks``) comes from the
*circular block bootstrap* of the samples, each record resampled on its own,
that ``bench compare`` has always used (:func:`relative_change`): blocks of
consecutive iterations, their length chosen per record from the
autocorrelation of the samples' ranks (:func:`block_length`, Politis & White
2004 with Patton et al. 2009's correction), so a drifting record gets long
blocks and honest, wide intervals, and independent samples get the plain
bootstrap.  Fewer than :data:`MIN_SAMPLES` samples on a side: no interval
(method ``none``, ``low``/``high`` None).

Whether a speedup can be trusted: :func:`validity`
==================================================
Reasons, each with a threshold that is a parameter (defaults below):

``wide``
    the interval's width ``(high - low) / point`` exceeds ``max_width``
    (default 0.10, :data:`DEFAULT_MAX_WIDTH`), or there is no interval
    (fewer than :data:`MIN_SAMPLES` samples).  Cells
    show speedups to two decimals; at the paper's speedups (1.3-2×) a 10 %
    wide interval is ±0.07-0.10, i.e. the second decimal means nothing and
    the first is in doubt; variants the paper compares (SNP vs ℓ2 at equal
    MACs) differ by less than that.  A quiet device with the paper profile
    (1000 iterations, 10 rounds) gives widths of 1-3 %.
``drift``
    the original's round medians (in round order) drift: a monotone trend,
    Spearman ``|ρ| >= drift_rho`` (default 0.8; a chance level of about 0.5 %
    for 10 rounds of pure noise) *and* a change of at least ``drift_change``
    (default 0.03) from the first round to the last along the Theil-Sen line,
    relative to the median round (needs :data:`MIN_TREND_ROUNDS` rounds); or a
    spread ``(max - min) / median`` of the round medians above
    ``drift_spread`` (default 0.10: a quiet device's 10 round medians spread
    by 1-3 %).  Interleaving makes a drifting device hit both models alike,
    but a 3 % trend is as big as the effects the paper discusses, so the
    reader should know the device was not in a steady state.
``environment``
    throttling, clock limits or the power mode changed during the group:
    :func:`environment_changes` of either record (the environment snapshots
    before and after the group, and the agent's own throttling warnings).
``samples``
    either record has fewer samples than asked (the agent's "fewer samples
    than asked" / "less than min_seconds" warnings, or ``n`` below the
    iterations of its settings): :func:`sample_shortfall`.

Nothing here prints or parses arguments (tests/test_layers.py).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

DEFAULT_CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
#: Fewer samples than this on either side: no interval, the pair is reported but never flagged.
MIN_SAMPLES = 10
#: Fewer rounds than this (shared, or per record when unpaired): the samples are resampled instead of the rounds.
MIN_ROUNDS = 5
#: Elements of one chunk of bootstrap work (memory bound: 2000 resamples of 100 000 samples would be 1.6 GB).
_CHUNK_ELEMENTS = 1 << 22

DEFAULT_MAX_WIDTH = 0.10
DEFAULT_DRIFT_RHO = 0.8
DEFAULT_DRIFT_CHANGE = 0.03
DEFAULT_DRIFT_SPREAD = 0.10
#: Fewer rounds than this: no trend test (a Spearman ρ of 4 points means little); the spread still counts.
MIN_TREND_ROUNDS = 5
#: The reasons :func:`validity` gives, in this order.
VALIDITY_REASONS = ("wide", "drift", "environment", "samples")
#: Prefixes of agent warnings that say the device's state changed while timing.
ENVIRONMENT_WARNINGS = ("throttling seen", "power mode changed", "clocks changed", "environment changed")
#: Agent warnings that say a record has fewer samples than asked (a prefix, and a phrase anywhere).
SAMPLE_WARNINGS = ("fewer samples than asked", "less than min_seconds")

METHODS = ("paired-rounds", "rounds", "blocks", "none")


# --------------------------------------------------------------------------
# Samples and rounds of a record
# --------------------------------------------------------------------------

def _samples_ms(record: Mapping[str, Any]) -> np.ndarray:
    return np.asarray(record.get("samples_ns") or [], dtype=float) / 1e6


def _rounds_of(record: Mapping[str, Any], n: int) -> np.ndarray:
    """The round index of each of the record's ``n`` samples: every sample in round 0 without rounds."""
    rounds = record.get("sample_rounds")
    if not isinstance(rounds, (list, tuple)) or len(rounds) != n:
        return np.zeros(n, dtype=np.int64)
    return np.asarray(rounds, dtype=np.int64)


def has_rounds(record: Mapping[str, Any]) -> bool:
    """Whether the record says the round of each sample (schema 4, agent protocol 2)."""
    rounds = record.get("sample_rounds")
    return isinstance(rounds, (list, tuple)) and len(rounds) == len(record.get("samples_ns") or []) > 0


def round_medians(record: Mapping[str, Any]) -> dict[int, float]:
    """Median latency in ms of each round of the record, by round index (in round order).

    A record without rounds is one round, 0, holding every sample; a record
    read without samples gives ``{}``.
    """
    values = _samples_ms(record)
    if values.size == 0:
        return {}
    rounds = _rounds_of(record, values.size)
    return {int(r): float(np.median(values[rounds == r])) for r in np.unique(rounds)}


# --------------------------------------------------------------------------
# The block bootstrap of samples (records without rounds)
# --------------------------------------------------------------------------

def block_length(samples: Sequence[float] | np.ndarray) -> int:
    """Circular-block-bootstrap block length for a time series (Politis & White 2004, Patton et al. 2009).

    Computed on the ranks of the samples, so that a handful of huge outliers do
    not dominate the autocovariances.  Returns 1 for independent samples (up to
    noise) and grows with the reach of the autocorrelation; at most
    ``min(3·sqrt(n), n/3)``.
    """
    x = np.asarray(samples, dtype=float)
    n = x.size
    if n < 8:
        return 1
    ranks = np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(float)
    eps = ranks - ranks.mean()
    var = float(eps @ eps)
    if var == 0.0:
        return 1
    b_max = math.ceil(min(3 * math.sqrt(n), n / 3))
    kn = max(5, int(math.log10(n)))
    m_max = min(int(math.ceil(math.sqrt(n))) + kn, n - 2)
    critical = 2 * math.sqrt(math.log10(n) / n)
    acov = np.array([float(eps[k:] @ eps[:n - k]) / n for k in range(m_max + 1)])
    acorr = np.abs(acov) / acov[0]
    m_hat = None
    for m in range(1, m_max - kn + 2):
        if np.all(acorr[m:m + kn] < critical):
            m_hat = m
            break
    big_m = m_max if m_hat is None else min(2 * max(m_hat, 1), m_max)
    g, long_run = 0.0, acov[0]
    for k in range(1, big_m + 1):
        lam = 1.0 if k / big_m <= 0.5 else 2 * (1 - k / big_m)  # flat-top lag window
        g += 2 * lam * k * acov[k]
        long_run += 2 * lam * acov[k]
    if long_run <= 0 or g == 0:
        return 1
    d_cb = 4 / 3 * long_run ** 2
    b = (2 * g ** 2 / d_cb) ** (1 / 3) * n ** (1 / 3)
    return int(max(1, min(math.ceil(b), b_max)))


def bootstrap_log_medians(samples: np.ndarray, resamples: int, rng: np.random.Generator,
                          block: int = 1) -> np.ndarray:
    """``log(median)`` of ``resamples`` circular-block bootstrap resamples of ``samples`` (in time order)."""
    x = np.asarray(samples, dtype=float)
    n = x.size
    block = max(1, min(int(block), n))
    blocks = -(-n // block)
    offsets = np.arange(block)
    out = np.empty(resamples)
    per_chunk = max(1, _CHUNK_ELEMENTS // (blocks * block))
    for start in range(0, resamples, per_chunk):
        count = min(per_chunk, resamples - start)
        starts = rng.integers(0, n, size=(count, blocks))
        idx = ((starts[:, :, None] + offsets) % n).reshape(count, blocks * block)[:, :n]
        out[start:start + count] = np.median(x[idx], axis=1)
    return np.log(out)


@dataclass
class Change:
    """Relative change of the median (candidate / baseline - 1) and its confidence interval.

    ``method`` says how the interval was resampled (:data:`METHODS`); ``block_*``
    are the block lengths of the ``blocks`` method, ``rounds_*`` the rounds of
    the ``rounds`` method.
    """

    change: float
    ci_low: float | None
    ci_high: float | None
    block_baseline: int | None = None
    block_candidate: int | None = None
    method: str = "blocks"
    rounds_baseline: int | None = None
    rounds_candidate: int | None = None


def relative_change(baseline: Sequence[float] | np.ndarray, candidate: Sequence[float] | np.ndarray, *,
                    resamples: int = DEFAULT_RESAMPLES, confidence: float = DEFAULT_CONFIDENCE,
                    rng: np.random.Generator | None = None, block: int | None = None) -> Change:
    """Change of the median from ``baseline`` to ``candidate`` samples, with a block-bootstrap interval.

    ``block`` forces one block length for both runs (1: the i.i.d. bootstrap);
    by default each run gets its own (:func:`block_length`).  With fewer than
    :data:`MIN_SAMPLES` samples on a side the interval is ``None``.
    """
    b = np.asarray(baseline, dtype=float)
    c = np.asarray(candidate, dtype=float)
    if b.size == 0 or c.size == 0:
        raise ValueError("both runs need at least one sample")
    if not (np.all(b > 0) and np.all(c > 0)):
        raise ValueError("latency samples must be positive")
    point = float(np.median(c) / np.median(b) - 1)
    if b.size < MIN_SAMPLES or c.size < MIN_SAMPLES:
        return Change(point, None, None, method="none")
    rng = rng if rng is not None else np.random.default_rng(DEFAULT_SEED)
    bb = block if block is not None else block_length(b)
    bc = block if block is not None else block_length(c)
    diff = bootstrap_log_medians(c, resamples, rng, bc) - bootstrap_log_medians(b, resamples, rng, bb)
    alpha = 1 - confidence
    lo, hi = np.quantile(diff, [alpha / 2, 1 - alpha / 2])
    return Change(point, float(math.expm1(lo)), float(math.expm1(hi)), bb, bc)


# --------------------------------------------------------------------------
# The cluster bootstrap of rounds
# --------------------------------------------------------------------------

def expanded_alpha(confidence: float, clusters: int) -> float:
    """The two-sided level α' of Hesterberg's expanded percentile interval for ``clusters`` resampled units.

    ``Φ⁻¹(1 - α'/2) = sqrt(K/(K-1)) · t_{K-1}(1 - α/2)``: the percentile
    interval of a bootstrap over K units, widened to what a Student interval
    with the unbiased variance would give.
    """
    alpha = 1 - confidence
    k = int(clusters)
    if k < 2:
        return alpha
    z = math.sqrt(k / (k - 1)) * float(stats.t.ppf(1 - alpha / 2, k - 1))
    return float(2 * stats.norm.sf(z))


def _round_bounds(log_ratio: np.ndarray, log_point: float, clusters: int, confidence: float) -> tuple[float, float]:
    """Bounds (log scale) from a bootstrap over ``clusters`` rounds: the hull of two small-K-corrected intervals.

    The expanded percentile interval (:func:`expanded_alpha`) follows the skew
    of the bootstrap distribution; the Student interval ``log_point ± t_{K-1} ·
    sd* · sqrt(K/(K-1))`` (sd*: the bootstrap standard deviation) is smooth
    where a bootstrap over 5 rounds has lumpy tails.  Alone, the first covered
    93-94 % at K = 5 (module doc); the hull covers at least 95 % in every
    calibration design, at 5 % (K = 10) to 20 % (K = 5) more width.
    """
    a = expanded_alpha(confidence, clusters)
    q_lo, q_hi = np.quantile(log_ratio, [a / 2, 1 - a / 2])
    k = max(int(clusters), 2)
    half = float(stats.t.ppf(0.5 + confidence / 2, k - 1)) * float(np.std(log_ratio, ddof=1)) * math.sqrt(k / (k - 1))
    return min(float(q_lo), log_point - half), max(float(q_hi), log_point + half)


def _draw_counts(clusters: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """How often each of ``clusters`` units is drawn in each resample: (resamples, clusters), rows sum to K."""
    idx = rng.integers(0, clusters, size=(resamples, clusters))
    flat = idx + clusters * np.arange(resamples)[:, None]
    return np.bincount(flat.ravel(), minlength=resamples * clusters).reshape(resamples, clusters)


def _pooled_log_medians(values: np.ndarray, cluster: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``log`` of the median of the pooled samples of each resample of clusters (one row of ``counts`` each).

    ``values`` are one record's samples, ``cluster`` the position (0..K-1) of
    each sample's round among the resampled rounds (-1: not resampled).  A
    sample weighs as often as its round was drawn; the median is the midpoint of
    the lower and upper weighted medians, so the identity resample gives
    ``np.median`` of the samples.  Nothing is copied per resample: the weighted
    count below the i-th smallest sample is ``counts @ below[:, i]``, and a
    vectorised binary search finds where it crosses half the total.
    """
    keep = cluster >= 0
    order = np.argsort(values[keep], kind="stable")
    x, lab = values[keep][order], cluster[keep][order]
    below = np.zeros((counts.shape[1], x.size))
    below[lab, np.arange(x.size)] = 1.0
    below = np.cumsum(below, axis=1)  # below[r, i]: samples of round r among the i+1 smallest
    weights = counts.astype(float)
    half = (weights @ below[:, -1]) / 2.0
    lower = _first_index(below, weights, half, strict=False)
    upper = _first_index(below, weights, half, strict=True)
    return np.log(0.5 * (x[lower] + x[upper]))


def _first_index(below: np.ndarray, weights: np.ndarray, target: np.ndarray, strict: bool) -> np.ndarray:
    """Per resample, the first sample index whose weighted count reaches (``strict``: exceeds) ``target``."""
    lo = np.zeros(weights.shape[0], dtype=np.int64)
    hi = np.full(weights.shape[0], below.shape[1] - 1, dtype=np.int64)
    while True:
        active = lo < hi
        if not active.any():
            return lo
        mid = (lo + hi) // 2
        count = np.einsum("bk,kb->b", weights, below[:, mid])
        reached = count > target if strict else count >= target
        hi = np.where(active & reached, mid, hi)
        lo = np.where(active & ~reached, mid + 1, lo)


def _cluster_index(rounds: np.ndarray, chosen: Sequence[int]) -> np.ndarray:
    """Position of each sample's round in ``chosen`` (-1 when its round is not among them)."""
    chosen = np.asarray(sorted(chosen), dtype=np.int64)
    position = np.minimum(np.searchsorted(chosen, rounds), max(chosen.size - 1, 0))
    return np.where(chosen[position] == rounds, position, -1) if chosen.size else np.full(rounds.size, -1)


def _round_log_ratios(num: tuple[np.ndarray, np.ndarray], den: tuple[np.ndarray, np.ndarray], paired: bool,
                      resamples: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Bootstrap ``log(median num / median den)`` over rounds; the resampled values and the K they rest on.

    ``num`` and ``den`` are (samples, rounds) of two records; paired: one draw of
    their shared rounds for both, else one draw of its own rounds each.
    """
    (xn, rn), (xd, rd) = num, den
    if paired:
        shared = sorted(set(np.unique(rn).tolist()) & set(np.unique(rd).tolist()))
        counts = _draw_counts(len(shared), resamples, rng)
        return (_pooled_log_medians(xn, _cluster_index(rn, shared), counts)
                - _pooled_log_medians(xd, _cluster_index(rd, shared), counts)), len(shared)
    out = np.zeros(resamples)
    ks = []
    for sign, (x, r) in ((1.0, num), (-1.0, den)):
        own = np.unique(r).tolist()
        ks.append(len(own))
        out += sign * _pooled_log_medians(x, _cluster_index(r, own), _draw_counts(len(own), resamples, rng))
    return out, min(ks)


def _shared_rounds(a: Mapping[str, Any], b: Mapping[str, Any]) -> int:
    """How many rounds two records timed in the same group both have samples in (0 for other groups)."""
    if not (has_rounds(a) and has_rounds(b)) or not a.get("group_key") or a.get("group_key") != b.get("group_key"):
        return 0
    return len(set(a["sample_rounds"]) & set(b["sample_rounds"]))


def _n_rounds(record: Mapping[str, Any]) -> int:
    return len(set(record["sample_rounds"])) if has_rounds(record) else 0


def _ratio_interval(num: Mapping[str, Any], den: Mapping[str, Any], confidence: float, resamples: int,
                    rng: np.random.Generator) -> Change:
    """``median(num) / median(den) - 1`` with its interval, resampling what the records allow (module doc).

    The point is the ratio of the records' ``median_ms`` (the median of all
    samples) when both have one, else of the samples' medians.
    """
    xn, xd = _samples_ms(num), _samples_ms(den)
    if xn.size == 0 or xd.size == 0:
        raise ValueError("both records need their samples (read them with_samples=True)")
    medians = (num.get("median_ms"), den.get("median_ms"))
    point = (float(medians[0]) / float(medians[1]) if all(isinstance(m, (int, float)) and m > 0 for m in medians)
             else float(np.median(xn) / np.median(xd))) - 1
    if xn.size < MIN_SAMPLES or xd.size < MIN_SAMPLES:
        return Change(point, None, None, method="none")
    if not (np.all(xn > 0) and np.all(xd > 0)):
        raise ValueError("latency samples must be positive")
    shared = _shared_rounds(num, den)
    if shared >= MIN_ROUNDS or min(_n_rounds(num), _n_rounds(den)) >= MIN_ROUNDS:
        paired = shared >= MIN_ROUNDS
        log_ratio, k = _round_log_ratios((xn, _rounds_of(num, xn.size)), (xd, _rounds_of(den, xd.size)), paired,
                                         resamples, rng)
        lo, hi = _round_bounds(log_ratio, math.log1p(point), k, confidence)
        kn, kd = (k, k) if paired else (_n_rounds(num), _n_rounds(den))
        return Change(point, float(math.expm1(lo)), float(math.expm1(hi)),
                      method="paired-rounds" if paired else "rounds", rounds_baseline=kd, rounds_candidate=kn)
    change = relative_change(xd, xn, resamples=resamples, confidence=confidence, rng=rng)
    change.change = point
    return change


def change_interval(baseline: Mapping[str, Any], candidate: Mapping[str, Any], *,
                    confidence: float = DEFAULT_CONFIDENCE, resamples: int = DEFAULT_RESAMPLES,
                    rng: np.random.Generator | None = None) -> Change:
    """The change of a job's median from a baseline record to a candidate record, with its interval.

    Two runs share no rounds, so when both records have at least
    :data:`MIN_ROUNDS` rounds each record's rounds are resampled on their own
    (method ``rounds``), else their samples in blocks (``blocks``,
    :func:`relative_change`).  Records without samples raise ValueError.
    """
    rng = rng if rng is not None else np.random.default_rng(DEFAULT_SEED)
    unpaired_base = {k: v for k, v in baseline.items() if k != "group_key"}  # runs never share a round
    return _ratio_interval(candidate, unpaired_base, confidence, resamples, rng)


# --------------------------------------------------------------------------
# Speedup intervals
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    """A speedup (base median ÷ pruned median) and its confidence interval.

    ``low``/``high`` are None when there is no interval (method ``none``:
    fewer than :data:`MIN_SAMPLES` samples, or records read without samples).
    ``rounds`` is how many rounds were resampled (the shared ones for
    ``paired-rounds``, the smaller record's for ``rounds``; 0 for the other
    methods).
    """

    point: float
    low: float | None
    high: float | None
    rounds: int
    method: str = "paired-rounds"
    confidence: float = DEFAULT_CONFIDENCE

    @property
    def relative_width(self) -> float | None:
        """``(high - low) / point``, None without an interval."""
        if self.low is None or self.high is None or not self.point:
            return None
        return (self.high - self.low) / self.point


def _pair_rng(seed: int, base: Mapping[str, Any], pruned: Mapping[str, Any]) -> np.random.Generator:
    """A generator seeded by ``seed`` and the pair's job keys: reproducible, independent of the table's order."""
    key = f"{base.get('job_key', '')}\n{pruned.get('job_key', '')}"
    return np.random.default_rng([int(seed), zlib.crc32(key.encode())])


def speedup_interval(base: Mapping[str, Any], pruned: Mapping[str, Any], confidence: float = DEFAULT_CONFIDENCE,
                     resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> Interval:
    """The speedup of ``pruned`` over ``base`` (two ok records) with its confidence interval (module doc).

    Records of the same group with at least :data:`MIN_ROUNDS` shared rounds:
    paired bootstrap of those rounds; records of different groups with rounds:
    each one's rounds; otherwise the block bootstrap of the samples.  Records
    read without samples get the point alone (method ``none``).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 100:
        raise ValueError(f"use at least 100 bootstrap resamples, got {resamples}")
    if not (base.get("samples_ns") and pruned.get("samples_ns")):
        point = float(base["median_ms"]) / float(pruned["median_ms"])
        return Interval(point, None, None, 0, "none", confidence)
    change = _ratio_interval(base, pruned, confidence, resamples, _pair_rng(seed, base, pruned))
    low = None if change.ci_low is None else 1 + change.ci_low
    high = None if change.ci_high is None else 1 + change.ci_high
    rounds = change.rounds_baseline if change.method == "paired-rounds" else \
        min(change.rounds_baseline or 0, change.rounds_candidate or 0)
    return Interval(1 + change.change, low, high, int(rounds or 0), change.method, confidence)


# --------------------------------------------------------------------------
# Validity
# --------------------------------------------------------------------------

def throttle_flags(env: Mapping[str, Any] | None) -> list[str]:
    """Throttling the environment snapshots show: ``*_now`` flags, or ``*_occurred`` ones new during the run."""
    env = env or {}
    before = ((env.get("before") or {}).get("pi_throttled") or {}).get("flags") or []
    after = ((env.get("after") or {}).get("pi_throttled") or {}).get("flags") or []
    flags = [f for f in [*before, *after] if f.endswith("_now")]
    flags += [f for f in after if f.endswith("_occurred") and f not in before]
    return list(dict.fromkeys(flags))


def _changed(name: str, before: Any, after: Any, unit: str = "", scale: float = 1.0) -> str | None:
    if before is None or after is None or before == after:
        return None
    if unit and isinstance(before, (int, float)) and isinstance(after, (int, float)):
        return f"{name} {before * scale:g} -> {after * scale:g} {unit}"
    return f"{name} {before} -> {after}"


def _snapshot_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Power mode, clock limits and governors that differ between two environment snapshots."""
    out = [_changed("power mode", ((before.get("jetson_nvpmodel") or {}).get("mode")),
                    ((after.get("jetson_nvpmodel") or {}).get("mode")))]
    cpus_b = (before.get("cpufreq") or {}).get("cpus") or {}
    cpus_a = (after.get("cpufreq") or {}).get("cpus") or {}
    for cpu in sorted(set(cpus_b) & set(cpus_a), key=lambda c: (len(c), c)):
        b, a = cpus_b[cpu] or {}, cpus_a[cpu] or {}
        out.append(_changed(f"{cpu} max clock", b.get("max_khz"), a.get("max_khz"), "MHz", 1e-3))
        out.append(_changed(f"{cpu} governor", b.get("governor"), a.get("governor")))
    dev_b, dev_a = before.get("devfreq") or {}, after.get("devfreq") or {}
    for dev in sorted(set(dev_b) & set(dev_a)):
        b, a = dev_b[dev] or {}, dev_a[dev] or {}
        out.append(_changed(f"{dev} max clock", b.get("max_hz"), a.get("max_hz"), "MHz", 1e-6))
        out.append(_changed(f"{dev} governor", b.get("governor"), a.get("governor")))
    gpus_b = {g.get("index"): g for g in before.get("nvidia_smi") or [] if isinstance(g, Mapping)}
    gpus_a = {g.get("index"): g for g in after.get("nvidia_smi") or [] if isinstance(g, Mapping)}
    for index in sorted(set(gpus_b) & set(gpus_a), key=str):
        b, a = gpus_b[index], gpus_a[index]
        out.append(_changed(f"GPU {index} max SM clock", b.get("clocks.max.sm"), a.get("clocks.max.sm")))
        out.append(_changed(f"GPU {index} power limit", b.get("power.limit"), a.get("power.limit")))
    return [c for c in out if c]


def is_environment_warning(warning: str) -> bool:
    """Whether an agent warning says the device's state changed while timing (:data:`ENVIRONMENT_WARNINGS`)."""
    return str(warning).startswith(ENVIRONMENT_WARNINGS)


def environment_changes(record: Mapping[str, Any]) -> list[str]:
    """What changed on the device while the record's group was timed, one short text each (empty: nothing).

    Throttling flags (``*_now``, or ``*_occurred`` new since the snapshot before),
    and between the snapshots before and after: the Jetson power mode, CPU and
    devfreq clock limits and governors, NVIDIA max SM clock and power limit;
    then the agent's own warnings of that kind (:data:`ENVIRONMENT_WARNINGS`)
    when the snapshots showed nothing of it.
    """
    env = record.get("env") or {}
    flags = throttle_flags(env)
    out = [", ".join(flags)] if flags else []  # the flag names say it: throttled_now, under_voltage_occurred
    out += _snapshot_changes(env.get("before") or {}, env.get("after") or {})
    for warning in record.get("warnings") or []:
        if is_environment_warning(warning) and not (flags and str(warning).startswith("throttling seen")):
            out.append(first_line(warning))
    return list(dict.fromkeys(out))


def first_line(text: Any, limit: int = 160) -> str:
    """The first line of a text, cut to ``limit`` characters (an ellipsis marks the cut)."""
    line = (str(text or "").strip().splitlines() or [""])[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def is_sample_warning(warning: str) -> bool:
    """Whether an agent warning says the record has fewer samples (or less time) than asked."""
    text = str(warning)
    return text.startswith(SAMPLE_WARNINGS[0]) or SAMPLE_WARNINGS[1] in text


def asked_iterations(record: Mapping[str, Any]) -> int | None:
    """The iterations the record's measure settings asked for (per model, all rounds together), if known."""
    settings = (record.get("extra") or {}).get("settings") or {}
    asked = (settings.get("measure") or {}).get("iterations")
    return asked if isinstance(asked, int) and not isinstance(asked, bool) else None


def sample_shortfall(record: Mapping[str, Any]) -> str | None:
    """Why the record has fewer samples than asked (its agent's warnings, or ``n`` below the iterations asked)."""
    said = [w for w in record.get("warnings") or [] if is_sample_warning(w)]
    if said:
        return "; ".join(first_line(str(w).removeprefix(SAMPLE_WARNINGS[0]).lstrip(" :") or w) for w in said)
    asked, n = asked_iterations(record), record.get("n") or 0
    if asked is not None and n < asked:
        return f"{n} of {asked} samples"
    return None


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if np.ptp(y) == 0:
        return 0.0
    return float(np.corrcoef(stats.rankdata(x), stats.rankdata(y))[0, 1])


def _theil_sen_slope(x: np.ndarray, y: np.ndarray) -> float:
    i, j = np.triu_indices(x.size, k=1)
    return float(np.median((y[j] - y[i]) / (x[j] - x[i])))


def round_drift(record: Mapping[str, Any], *, drift_rho: float = DEFAULT_DRIFT_RHO,
                drift_change: float = DEFAULT_DRIFT_CHANGE, drift_spread: float = DEFAULT_DRIFT_SPREAD) -> str | None:
    """How the record's round medians drift beyond the thresholds (module doc), or None."""
    medians = round_medians(record)
    if len(medians) < 2:
        return None
    x = np.array(list(medians), dtype=float)
    y = np.array(list(medians.values()))
    centre = float(np.median(y))
    found = []
    if x.size >= MIN_TREND_ROUNDS:
        rho = _spearman(x, y)
        change = _theil_sen_slope(x, y) * (x[-1] - x[0]) / centre
        if abs(rho) >= drift_rho and abs(change) >= drift_change:
            found.append(f"trend {change * 100:+.1f} % over {x.size} rounds (Spearman ρ {rho:+.2f})")
    spread = float(np.ptp(y)) / centre
    if spread > drift_spread:
        found.append(f"round medians spread {spread * 100:.0f} % ({y.min():.3g}–{y.max():.3g} ms)")
    return "; ".join(found) or None


def validity_details(base: Mapping[str, Any], pruned: Mapping[str, Any], interval: Interval | None, *,
                     max_width: float = DEFAULT_MAX_WIDTH, drift_rho: float = DEFAULT_DRIFT_RHO,
                     drift_change: float = DEFAULT_DRIFT_CHANGE, drift_spread: float = DEFAULT_DRIFT_SPREAD
                     ) -> list[tuple[str, str]]:
    """``(reason, detail)`` for every reason the speedup of ``pruned`` over ``base`` should not be trusted.

    Reasons in :data:`VALIDITY_REASONS` order; thresholds in the module doc.
    ``interval`` is :func:`speedup_interval` of the pair.  Records read
    without samples cannot be judged on width and drift: only the environment
    and sample-count reasons apply to them.
    """
    found: list[tuple[str, str]] = []
    width = None if interval is None else interval.relative_width
    if width is None:
        if base.get("samples_ns") and pruned.get("samples_ns"):
            found.append(("wide", f"no confidence interval (fewer than {MIN_SAMPLES} samples)"))
    elif width > max_width:
        found.append(("wide", (f"{interval.confidence * 100:g} % interval {interval.low:.2f}–{interval.high:.2f} "
                               f"spans {width * 100:.0f} % of the speedup (limit {max_width * 100:g} %)")))
    drift = round_drift(base, drift_rho=drift_rho, drift_change=drift_change, drift_spread=drift_spread)
    if drift:
        found.append(("drift", f"original: {drift}"))
    changes = [f"{who}: {c}" for who, record in (("original", base), ("pruned", pruned))
               for c in environment_changes(record)]
    if base.get("group_key") and base.get("group_key") == pruned.get("group_key"):  # one group, one environment
        changes = list(dict.fromkeys(c.split(": ", 1)[1] for c in changes))
    if changes:
        found.append(("environment", "; ".join(changes)))
    short = [f"{who}: {s}" for who, record in (("original", base), ("pruned", pruned))
             if (s := sample_shortfall(record))]
    if short:
        found.append(("samples", "; ".join(short)))
    return found


def validity(base: Mapping[str, Any], pruned: Mapping[str, Any], interval: Interval | None, **thresholds: float
             ) -> list[str]:
    """Why the speedup of ``pruned`` over ``base`` should not be trusted: ``"reason: detail"`` each; [] if none.

    The reasons are ``wide``, ``drift``, ``environment`` and ``samples``
    (module doc); ``thresholds`` are those of :func:`validity_details`.
    """
    return [f"{key}: {detail}" for key, detail in validity_details(base, pruned, interval, **thresholds)]

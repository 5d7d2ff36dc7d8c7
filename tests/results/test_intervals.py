"""`results.intervals`: speedup intervals over interleaved rounds, their calibration, and validity reasons.

Synthetic latencies only (no timing), drawn with numpy: the log-latency of a
sample is the model's log median + a round effect both models share (a linear
drift plus noise: the device's state) + a round effect of each model's own +
per-sample noise + rare heavy-tailed outliers.  The calibration figures quoted
in results/intervals.py come from this generator (with 2000 seeds).
"""

from __future__ import annotations

import numpy as np
import pytest

from results import intervals
from results.intervals import Interval, round_medians, speedup_interval, validity, validity_details

SEEDS = 200


def latencies(rng: np.random.Generator, rounds: int, per_round: int, medians_ms: tuple[float, ...], *,
              shared_drift: float = 0.05, shared_noise: float = 0.01, own: float = 0.01, noise: float = 0.02,
              outliers: float = 0.01) -> list[np.ndarray]:
    """(rounds, per_round) ms samples for each model of one comparison group, timed in interleaved rounds."""
    shared = np.linspace(0.0, shared_drift, rounds) + rng.normal(0.0, shared_noise, rounds)
    out = []
    for median in medians_ms:
        x = (np.log(median) + shared[:, None] + rng.normal(0.0, own, rounds)[:, None]
             + rng.normal(0.0, noise, (rounds, per_round)))
        x += (rng.random((rounds, per_round)) < outliers) * rng.exponential(1.0, (rounds, per_round))
        out.append(np.exp(x))
    return out


def record(ms: np.ndarray, key: str, group: str | None = "g", with_rounds: bool = True, **extra) -> dict:
    """An ok record as make_record builds it (the fields the intervals read)."""
    rounds, per_round = ms.shape
    samples = np.round(ms * 1e6).astype(np.int64).ravel()
    rec = {"job_key": key, "status": "ok", "samples_ns": samples.tolist(), "median_ms": float(np.median(samples)) / 1e6,
           "n": samples.size, "group_key": group if with_rounds else None, "rounds": rounds if with_rounds else None,
           "sample_rounds": np.repeat(np.arange(rounds), per_round).tolist() if with_rounds else None,
           "env": {"before": {}, "after": {}}, "warnings": [], "extra": {}}
    rec.update(extra)
    return rec


def pair(seed: int, true_speedup: float, rounds: int = 10, per_round: int = 100, **kwargs) -> tuple[dict, dict]:
    base, pruned = latencies(np.random.default_rng(seed), rounds, per_round, (10.0 * true_speedup, 10.0), **kwargs)
    return record(base, "base"), record(pruned, "pruned")


# --------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------

def test_a_model_paired_with_itself_is_covered_at_the_nominal_rate():
    """A/A: both members drawn from one distribution; the 95 % interval must cover 1.0 in >= 95 % of the seeds."""
    hits = []
    for seed in range(SEEDS):
        iv = speedup_interval(*pair(seed, 1.0))
        assert iv.method == "paired-rounds" and iv.rounds == 10
        hits.append(iv.low <= 1.0 <= iv.high)
    assert np.mean(hits) >= 0.95, np.mean(hits)


def test_a_ten_percent_speedup_at_two_percent_noise_is_resolved():
    resolved, widths = [], []
    for seed in range(SEEDS):
        iv = speedup_interval(*pair(seed, 1.10))
        resolved.append(iv.low > 1.0)
        widths.append(iv.relative_width)
        assert iv.low <= iv.point <= iv.high
    assert np.mean(resolved) >= 0.95, np.mean(resolved)
    assert np.median(widths) < intervals.DEFAULT_MAX_WIDTH / 2  # a quiet group's cells are not marked wide


def test_five_rounds_are_not_too_narrow():
    """The quick profile's 5 rounds: the small-K correction keeps the A/A coverage at the nominal rate."""
    hits = []
    for seed in range(100):
        iv = speedup_interval(*pair(seed, 1.0, rounds=5))
        hits.append(iv.low <= 1.0 <= iv.high)
    assert np.mean(hits) >= 0.93, np.mean(hits)


def test_the_interval_follows_the_shared_rounds_not_the_samples():
    """Own round effects (a burst during one model's block) widen the interval; a 20 % shared drift hardly does."""
    quiet = speedup_interval(*pair(1, 1.0, own=0.0, shared_drift=0.2))
    bursty = speedup_interval(*pair(1, 1.0, own=0.05, shared_drift=0.0))
    assert quiet.relative_width < 0.03 and bursty.relative_width > 0.06


# --------------------------------------------------------------------------
# Methods and fallbacks
# --------------------------------------------------------------------------

def test_pooled_median_of_resampled_rounds_is_exact():
    rng = np.random.default_rng(3)
    values, clusters = rng.random(101), rng.integers(0, 4, 101)
    counts = np.array([[1, 1, 1, 1], [2, 0, 1, 1], [0, 0, 4, 0]])
    got = np.exp(intervals._pooled_log_medians(values, clusters, counts))
    expected = [np.median(np.concatenate([np.repeat(values[clusters == r], c) for r, c in enumerate(row)]))
                for row in counts]
    assert got == pytest.approx(expected, rel=1e-12)


def test_round_medians():
    base, _ = pair(0, 1.0, rounds=4, per_round=5)
    medians = round_medians(base)
    assert list(medians) == [0, 1, 2, 3]
    assert medians[2] == pytest.approx(np.median(np.asarray(base["samples_ns"][10:15]) / 1e6))
    old = {**base, "sample_rounds": None}
    assert round_medians(old) == {0: pytest.approx(np.median(np.asarray(base["samples_ns"]) / 1e6))}
    assert round_medians({"samples_ns": []}) == {}


def test_old_records_without_rounds_fall_back_to_the_block_bootstrap():
    base, pruned = latencies(np.random.default_rng(5), 10, 100, (15.0, 10.0))
    old_b, old_p = record(base, "b", with_rounds=False), record(pruned, "p", with_rounds=False)
    iv = speedup_interval(old_b, old_p)
    assert iv.method == "blocks" and iv.rounds == 0
    assert iv.point == pytest.approx(old_b["median_ms"] / old_p["median_ms"]) and iv.low < iv.point < iv.high
    assert 1.3 < iv.low and iv.high < 1.7
    # one old, one new record: no shared rounds, so the samples again
    assert speedup_interval(record(base, "b"), old_p).method == "blocks"
    # a record without its samples (read with_samples=False): the point alone, and no validity judgement on it
    bare = {k: v for k, v in old_b.items() if k != "samples_ns"}
    iv = speedup_interval(bare, old_p)
    assert (iv.method, iv.low, iv.high) == ("none", None, None) and iv.point == pytest.approx(1.5, rel=0.05)
    assert validity(bare, old_p, iv) == []
    # fewer than MIN_SAMPLES: no interval, marked
    few = record(pruned[:1, :5], "p")
    iv = speedup_interval(old_b, few)
    assert iv.method == "none" and iv.low is None
    assert [k for k, _ in validity_details(old_b, few, iv)] == ["wide"]


def test_members_of_different_groups_resample_their_own_rounds():
    base, pruned = latencies(np.random.default_rng(6), 10, 50, (12.0, 10.0))
    b, p = record(base, "b", group="first"), record(pruned, "p", group="resumed")
    iv = speedup_interval(b, p)
    assert iv.method == "rounds" and iv.rounds == 10 and iv.low < 1.2 < iv.high
    # same samples, same group: paired, and narrower (the shared drift cancels)
    assert speedup_interval(b, {**p, "group_key": "first"}).relative_width < iv.relative_width


def test_intervals_are_reproducible_and_checked():
    b, p = pair(2, 1.3)
    assert speedup_interval(b, p) == speedup_interval(b, p)
    assert speedup_interval(b, p, seed=1) != speedup_interval(b, p)
    with pytest.raises(ValueError):
        speedup_interval(b, p, confidence=1.5)
    with pytest.raises(ValueError):
        speedup_interval(b, p, resamples=10)


def test_expanded_alpha():
    assert intervals.expanded_alpha(0.95, 10) == pytest.approx(0.0171, abs=5e-4)
    assert intervals.expanded_alpha(0.95, 1000) == pytest.approx(0.05, abs=1e-3)
    assert intervals.expanded_alpha(0.95, 5) < intervals.expanded_alpha(0.95, 10) < 0.05


# --------------------------------------------------------------------------
# Validity
# --------------------------------------------------------------------------

def reasons(base: dict, pruned: dict, **thresholds) -> dict[str, str]:
    return dict(validity_details(base, pruned, speedup_interval(base, pruned), **thresholds))


def test_a_quiet_pair_is_valid():
    base, pruned = pair(0, 1.5, shared_drift=0.0)
    assert validity(base, pruned, speedup_interval(base, pruned)) == []


def test_a_drifting_original_is_marked():
    base, pruned = pair(0, 1.5, shared_drift=0.08)  # the device slowed by 8 % over the group
    found = reasons(base, pruned)
    assert list(found) == ["drift"] and "trend +" in found["drift"] and "ρ" in found["drift"]
    assert "drift" not in reasons(base, pruned, drift_change=0.2)  # thresholds are parameters
    assert "drift" not in reasons(*pair(0, 1.5, shared_drift=0.01))  # 1 %: under the default 3 %
    # a jumpy device (no trend, one slow round) is marked by the spread of the round medians
    jumpy_b, jumpy_p = pair(4, 1.5, shared_drift=0.0)
    jumpy_b["samples_ns"] = [s * (13 if r == 3 else 10) // 10 for s, r in zip(jumpy_b["samples_ns"],
                                                                              jumpy_b["sample_rounds"])]
    assert "round medians spread" in reasons(jumpy_b, jumpy_p)["drift"]
    # strings for people: "reason: detail"
    assert validity(base, pruned, speedup_interval(base, pruned))[0].startswith("drift: original: trend")


def test_a_wide_interval_is_marked():
    base, pruned = pair(0, 1.5, own=0.08, shared_drift=0.0)
    found = reasons(base, pruned)
    assert "wide" in found and "spans" in found["wide"]
    assert "wide" not in reasons(base, pruned, max_width=1.0)


def test_environment_changes_during_the_group_are_marked():
    base, pruned = pair(0, 1.5, shared_drift=0.0)
    snap = {"jetson_nvpmodel": {"mode": "MAXN"},
            "cpufreq": {"cpus": {"cpu0": {"governor": "schedutil", "max_khz": 1_479_000}}},
            "devfreq": {"57000000.gpu": {"governor": "nvhost_podgov", "max_hz": 921_600_000}},
            "nvidia_smi": [{"index": "0", "clocks.max.sm": "1980", "power.limit": "300.00"}],
            "pi_throttled": {"raw": "0x0", "flags": []}}
    changed = {"jetson_nvpmodel": {"mode": "5W"},
               "cpufreq": {"cpus": {"cpu0": {"governor": "schedutil", "max_khz": 918_000}}},
               "devfreq": {"57000000.gpu": {"governor": "nvhost_podgov", "max_hz": 640_000_000}},
               "nvidia_smi": [{"index": "0", "clocks.max.sm": "1980", "power.limit": "250.00"}],
               "pi_throttled": {"raw": "0x50000", "flags": ["under_voltage_occurred", "throttled_occurred"]}}
    env = {"before": snap, "after": changed}
    changes = intervals.environment_changes({"env": env})
    assert changes == ["under_voltage_occurred, throttled_occurred", "power mode MAXN -> 5W",
                       "cpu0 max clock 1479 -> 918 MHz", "57000000.gpu max clock 921.6 -> 640 MHz",
                       "GPU 0 power limit 300.00 -> 250.00"]
    assert intervals.environment_changes({"env": {"before": snap, "after": snap}}) == []
    # one group shares its environment: said once, without saying whose record
    found = reasons({**base, "env": env}, {**pruned, "env": env})
    assert list(found) == ["environment"] and found["environment"].startswith("under_voltage_occurred")
    # the agent's own throttling warning, when the snapshots say nothing
    warned = {**base, "warnings": ["throttling seen (vcgencmd get_throttled 0x4): throttled_now"]}
    assert reasons(warned, pruned)["environment"].startswith("throttling seen")
    # a governor that is merely not 'performance' is no change
    assert "environment" not in reasons({**base, "warnings": ["cpufreq governor is ondemand, not 'performance'"]},
                                        pruned)


def test_fewer_samples_than_asked_is_marked():
    base, pruned = pair(0, 1.5, shared_drift=0.0)
    short = {**pruned, "warnings": ["fewer samples than asked: 600 of 1000 (stopped at max_seconds)"]}
    assert reasons(base, short)["samples"] == "pruned: 600 of 1000 (stopped at max_seconds)"
    asked = {**base, "extra": {"settings": {"measure": {"iterations": 5000}}}}
    assert reasons(asked, pruned)["samples"] == "original: 1000 of 5000 samples"


def test_interval_width():
    assert Interval(2.0, 1.9, 2.1, 10).relative_width == pytest.approx(0.1)
    assert Interval(2.0, None, None, 0, "none").relative_width is None

"""Speedup of each pruned model over the model it was pruned from: the one pairing rule of every report.

:func:`pair_records` is what ``bench table`` and the sweep's closing table
(``results/table.py``), ``bench figures`` (``results/figures.py``) and the
exports (``results/export.py``) compare:
each ok pruned record (``variant`` other than ``original``) with the ok record

* whose ``entry`` is the pruned record's ``base_entry`` (the ``base`` of its
  ``bench.toml`` entry), or, for records made before that column existed (no
  ``base_entry``), the ``original`` of the same timm ``model``;
* measured the same way: the same :data:`MEASURE_KEYS` (device, runtime,
  runtime options, format, batch size and input shape).

Two entries of one timm model with other kwargs or input sizes are thus
different bases, each compared with its own pruned entries. When several
records qualify (records of several runs), the last one given wins.

The speedup efficiency (docs/design.md §3) is speedup ÷ MACs ratio: 1.0 means every
saved MAC became saved time.  A speedup's confidence interval and the reasons
not to trust it come from ``results.intervals`` (:func:`interval_fields`), plus
one reason that needs the MACs and so lives here: ``superlinear``, an
efficiency above :data:`MAX_EFFICIENCY` (the pruned model got faster than its
MACs explain).  That happens for real (a smaller model whose weights now fit a
cache, a kernel that suits the new widths better), but far more often because
the device changed state between the two models (a block design on a loaded
machine gave 1.76 in ``make demo``), so such a cell is never shown unmarked:
its footnote gives the efficiency and the interval, and the reader decides.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

import pandas as pd

from results import intervals

#: Efficiency above this marks the speedup ``superlinear`` (module doc).
MAX_EFFICIENCY = 1.0

#: Record fields that must be equal for two records to be compared (measured the same way).
MEASURE_KEYS = ("device", "runtime", "runtime_options", "format", "batch_size", "input_shape")


def options_text(runtime_options: Mapping[str, Any] | None) -> str:
    """Runtime options as canonical JSON (sorted keys): equal options, equal text."""
    return json.dumps(dict(runtime_options or {}), sort_keys=True)


def measure_key(record: Mapping[str, Any]) -> tuple:
    """The :data:`MEASURE_KEYS` of a record as one hashable tuple (options as canonical JSON)."""
    shape = record.get("input_shape")
    shape = tuple(int(d) for d in shape) if isinstance(shape, (list, tuple)) else None
    return (record["device"], record["runtime"], options_text(record.get("runtime_options")), record["format"],
            int(record["batch_size"]), shape)


def _text(value: Any) -> str | None:
    """A text column of a record that may have been through pandas (None may come back as NaN)."""
    return value if isinstance(value, str) and value else None


def _usable(record: Mapping[str, Any]) -> bool:
    median = record.get("median_ms")
    return record.get("status") == "ok" and median is not None and not (isinstance(median, float)
                                                                         and math.isnan(median))


def pair_indices(records: Sequence[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """``(pruned index, base index)`` into `records` for every ok pruned record with an ok base (module doc)."""
    by_entry: dict[tuple, int] = {}
    originals: dict[tuple, int] = {}
    pruned: list[tuple[int, tuple]] = []
    for i, record in enumerate(records):
        if not _usable(record):
            continue
        key = measure_key(record)
        entry = _text(record.get("entry"))
        if entry is not None:
            by_entry[(entry, key)] = i
        if record["variant"] == "original":
            originals[(record["model"], key)] = i
        else:
            pruned.append((i, key))
    pairs = []
    for i, key in pruned:
        base = _text(records[i].get("base_entry"))
        j = by_entry.get((base, key)) if base is not None else originals.get((records[i]["model"], key))
        if j is not None and j != i:
            pairs.append((i, j))
    return pairs


def pair_records(records: Sequence[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """``(pruned record, base record)`` for every ok pruned record with an ok base to compare with."""
    return [(records[i], records[j]) for i, j in pair_indices(records)]


def _ratio(num: Any, den: Any) -> float:
    try:
        num, den = float(num), float(den)
    except (TypeError, ValueError):
        return math.nan
    return num / den if den and not math.isnan(den) else math.nan


def superlinear_detail(base: Mapping[str, Any], pruned: Mapping[str, Any],
                       interval: intervals.Interval | None = None) -> str | None:
    """Why the pair's efficiency (speedup ÷ MACs ratio) above :data:`MAX_EFFICIENCY` is suspect; None when it is not."""
    macs_ratio = _ratio(base.get("macs"), pruned.get("macs"))
    if math.isnan(macs_ratio):
        return None
    speedup = interval.point if interval is not None else float(base["median_ms"]) / float(pruned["median_ms"])
    efficiency = speedup / macs_ratio
    if not efficiency > MAX_EFFICIENCY:
        return None
    bounds = "" if interval is None or interval.low is None else f" ({interval.low:.2f}–{interval.high:.2f})"
    return (f"efficiency {efficiency:.2f}: speedup {speedup:.2f}×{bounds} above the MACs ratio {macs_ratio:.2f}×; "
            f"the device's state may have changed between the models, or the smaller model fits a cache")


def interval_fields(base: Mapping[str, Any], pruned: Mapping[str, Any], *,
                    confidence: float = intervals.DEFAULT_CONFIDENCE, resamples: int = intervals.DEFAULT_RESAMPLES,
                    seed: int = intervals.DEFAULT_SEED, thresholds: Mapping[str, float] | None = None
                    ) -> dict[str, Any]:
    """The speedup of a pair with its interval and validity (``results.intervals``), as report columns.

    ``speedup``, ``speedup_low``, ``speedup_high`` (NaN without an interval),
    ``interval_method``, ``interval_rounds``, ``validity`` (``"reason:
    detail"`` strings, [] when the speedup can be trusted) and
    ``validity_details`` (``(reason, detail)`` pairs).
    """
    interval = intervals.speedup_interval(base, pruned, confidence, resamples, seed)
    details = intervals.validity_details(base, pruned, interval, **dict(thresholds or {}))
    superlinear = superlinear_detail(base, pruned, interval)
    if superlinear:
        details = [*details, ("superlinear", superlinear)]
    return {"speedup": interval.point,
            "speedup_low": math.nan if interval.low is None else interval.low,
            "speedup_high": math.nan if interval.high is None else interval.high,
            "interval_method": interval.method, "interval_rounds": interval.rounds,
            "validity": [f"{k}: {d}" for k, d in details], "validity_details": details}


def speedup_frame(records: Sequence[Mapping[str, Any]], *, with_intervals: bool = False,
                  confidence: float = intervals.DEFAULT_CONFIDENCE, resamples: int = intervals.DEFAULT_RESAMPLES,
                  seed: int = intervals.DEFAULT_SEED, thresholds: Mapping[str, float] | None = None) -> pd.DataFrame:
    """One row per pair of :func:`pair_records`: the pruned record's fields, its base's, and the ratios.

    Columns added to the pruned record's: ``options`` (canonical JSON),
    ``record_index`` and ``base_index`` (positions in `records`),
    ``entry_original``, ``job_key_original``, ``median_ms_original``,
    ``macs_original``, ``speedup`` (base median ÷ pruned median),
    ``macs_ratio`` (base MACs ÷ pruned MACs) and ``efficiency`` (speedup ÷ MACs
    ratio); ``with_intervals`` adds the columns of :func:`interval_fields`
    (the records then need their samples; `confidence`, `resamples`, `seed`
    and the validity `thresholds` are passed on). Empty (no columns) without a pair.
    """
    rows = []
    for i, j in pair_indices(records):
        pruned, base = records[i], records[j]
        speedup = float(base["median_ms"]) / float(pruned["median_ms"])
        macs_ratio = _ratio(base.get("macs"), pruned.get("macs"))
        row = {**pruned, "options": options_text(pruned.get("runtime_options")), "record_index": i,
               "base_index": j, "entry_original": base.get("entry"), "job_key_original": base.get("job_key"),
               "median_ms_original": float(base["median_ms"]), "macs_original": base.get("macs"),
               "speedup": speedup, "macs_ratio": macs_ratio,
               "efficiency": speedup / macs_ratio if macs_ratio else math.nan}
        if with_intervals:
            row.update(interval_fields(base, pruned, confidence=confidence, resamples=resamples, seed=seed,
                                       thresholds=thresholds))
        rows.append(row)
    return pd.DataFrame(rows)

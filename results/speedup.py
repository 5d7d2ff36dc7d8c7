"""Speedup of each pruned variant over its original, from stored records.

A pruned record is paired with the ``original`` record of the same timm model
on the same device, runtime, runtime options, format and batch size. The
speedup efficiency (DESIGN.md §3) is speedup ÷ MACs ratio: 1.0 means every
saved MAC became saved time.
"""

from __future__ import annotations

import json

import pandas as pd

PAIR_KEYS = ["model", "device", "runtime", "options", "format", "batch_size"]


def speedup_frame(records: list[dict]) -> pd.DataFrame:
    """One row per ok pruned record that has an ok original to compare with."""
    ok = [r for r in records if r["status"] == "ok"]
    if not ok:
        return pd.DataFrame()
    df = pd.DataFrame(ok)
    df["options"] = df["runtime_options"].map(lambda o: json.dumps(o, sort_keys=True))
    base = df[df["variant"] == "original"][PAIR_KEYS + ["median_ms", "macs"]]
    pruned = df[df["variant"] != "original"]
    pairs = pruned.merge(base, on=PAIR_KEYS, suffixes=("", "_original"))
    if pairs.empty:
        return pairs
    pairs["speedup"] = pairs["median_ms_original"] / pairs["median_ms"]
    pairs["macs_ratio"] = pairs["macs_original"] / pairs["macs"]
    pairs["efficiency"] = pairs["speedup"] / pairs["macs_ratio"]
    return pairs


def speedup_markdown(records: list[dict]) -> str:
    """The sweep's closing table (markdown): original vs pruned per device and runtime."""
    pairs = speedup_frame(records)
    if pairs.empty:
        return "(no original/pruned pair measured successfully: no speedup to show)"
    table = pd.DataFrame({
        "model": pairs["model"], "variant": pairs["variant"], "device": pairs["device"],
        "runtime (format)": pairs["runtime"] + " (." + pairs["format"] + ")", "batch": pairs["batch_size"],
        "original ms": pairs["median_ms_original"].round(2), "pruned ms": pairs["median_ms"].round(2),
        "speedup": pairs["speedup"].map("{:.2f}x".format), "MACs ratio": pairs["macs_ratio"].map("{:.2f}x".format),
        "efficiency": pairs["efficiency"].round(2),
    })
    return table.to_markdown(index=False)

"""The one pairing rule (results/speedup.py) and its users: the sweep's closing table, `bench table`, the figures.

A pruned record is compared with the record of its ``base_entry`` measured the
same way (device, runtime, options, format, batch size and input shape); old
records without a base_entry fall back to the original of the same timm model.
Records are built with ``make_record`` from jobs shaped as the harness plans
them (``entry``, ``base``, ``label``, ``device_label``, ``top1``).
"""

from __future__ import annotations

import hashlib

import pytest

from results import figures
from results.records import make_record
from results.speedup import pair_records, speedup_frame
from results.table import build_tables, display_frame

TIMM = "deit_tiny_patch16_224"


def record(entry: str | None, variant: str, ms: float, *, base: str | None = None, model: str = TIMM,
           size: int = 224, macs: int = 1_000_000_000, device: str = "pi", fmt: str = "onnx",
           runtime: str = "onnxruntime", options: dict | None = None, batch: int = 1, status: str = "ok") -> dict:
    shape = [batch, 3, size, size]
    job = {"model": model, "variant": variant, "entry": entry, "base": base, "device": device,
           "device_label": "Raspberry Pi 4B", "runtime": runtime, "runtime_options": options or {},
           "batch_size": batch, "input_shape": shape, "label": "",
           "artifact": {"sha256": hashlib.sha256(f"{entry}{model}{variant}{size}{fmt}".encode()).hexdigest(),
                        "format": fmt, "macs": macs, "params": macs // 200}}
    if entry is None:
        del job["entry"], job["base"]  # as records made before entries and bases were columns
    job["job_key"] = "|".join(map(str, (entry or model, variant, fmt, device, runtime, batch, size)))
    ns = int(ms * 1e6)
    result = ({"status": "ok", "samples_ns": [ns] * 5,
               "stats": {"n": 5, "median_ns": ns, "min_ns": ns, "mean_ns": ns, "max_ns": ns, "cv": 0.0}}
              if status == "ok" else {"status": "error", "error": {"stage": "load", "message": "boom"}})
    return make_record("20260101-000000-abcd", job, result, "rev")


def pairs_by_entry(records: list[dict]) -> dict[str, str]:
    return {p["entry"]: b["entry"] for p, b in pair_records(records)}


def two_originals_of_one_timm_model() -> list[dict]:
    """deit_tiny at 224 and at 384 px (other kwargs, other input shape), each with its own pruned entry; the
    384 px one is faster than its base, the 224 px one too, by different factors."""
    return [record("tiny224", "original", 100.0),
            record("tiny384", "original", 400.0, size=384, macs=3_000_000_000),
            record("tiny224_snp", "snp:paper", 50.0, base="tiny224", macs=500_000_000),
            record("tiny384_snp", "snp:paper", 100.0, base="tiny384", size=384, macs=1_000_000_000)]


def test_two_originals_of_one_timm_model_each_pair_with_their_own_pruned_entry():
    records = two_originals_of_one_timm_model()
    assert pairs_by_entry(records) == {"tiny224_snp": "tiny224", "tiny384_snp": "tiny384"}
    frame = speedup_frame(records).set_index("entry")
    assert frame.loc["tiny224_snp", "speedup"] == pytest.approx(2.0)
    assert frame.loc["tiny384_snp", "speedup"] == pytest.approx(4.0)
    assert frame.loc["tiny384_snp", "macs_ratio"] == pytest.approx(3.0)
    assert frame.loc["tiny384_snp", "efficiency"] == pytest.approx(4.0 / 3.0)
    assert frame.loc["tiny384_snp", "entry_original"] == "tiny384"


def test_same_input_shape_other_kwargs_pair_by_entry():
    """Two entries of one timm model, same input shape (e.g. other drop-path or head kwargs): the base decides."""
    records = [record("a", "original", 100.0), record("b", "original", 80.0),
               record("a_snp", "snp:paper", 50.0, base="a"), record("b_snp", "snp:paper", 40.0, base="b")]
    assert pairs_by_entry(records) == {"a_snp": "a", "b_snp": "b"}


def test_pruned_entry_pairs_with_its_differently_named_base():
    records = [record("my_base", "original", 120.0), record("deit_tiny", "original", 100.0),
               record("deit_tiny_snp", "snp:paper", 60.0, base="my_base", macs=500_000_000)]
    assert pairs_by_entry(records) == {"deit_tiny_snp": "my_base"}
    assert speedup_frame(records)["speedup"].tolist() == [pytest.approx(2.0)]


def test_pairs_need_the_same_measurement_and_an_ok_base():
    base = record("tiny", "original", 100.0)
    others = [record("tiny", "original", 90.0, device="xeon"), record("tiny", "original", 30.0, fmt="torchscript",
                                                                       runtime="torch"),
              record("tiny", "original", 70.0, options={"threads": 1}), record("tiny", "original", 200.0, batch=2)]
    pruned = record("tiny_snp", "snp:paper", 50.0, base="tiny")
    assert [(p["job_key"], b["job_key"]) for p, b in pair_records([*others, base, pruned])] == \
        [(pruned["job_key"], base["job_key"])]
    failed = record("tiny", "original", 0, status="error")
    assert pair_records([failed, pruned]) == [] and speedup_frame([failed, pruned]).empty
    assert pair_records([record("tiny_snp", "snp:paper", 50.0, base="tiny", size=384), base]) == []


def test_old_records_without_base_fall_back_to_the_original_of_the_same_model_and_shape():
    records = [record(None, "original", 100.0), record(None, "original", 400.0, size=384),
               record(None, "snp:paper", 50.0), record(None, "snp:paper", 100.0, size=384),
               record(None, "original", 10.0, model="other_vit")]
    pairs = {(p["input_shape"][2], b["input_shape"][2]): b["median_ms"] for p, b in pair_records(records)}
    assert pairs == {(224, 224): 100.0, (384, 384): 400.0}


def test_table_rows_per_entry_with_their_own_speedups():
    (table,) = build_tables(two_originals_of_one_timm_model(), "r", model_order=["tiny224", "tiny224_snp",
                                                                                   "tiny384", "tiny384_snp"],
                            plain=True)
    frame = display_frame(table)
    assert frame["model"].tolist() == [f"{TIMM} (tiny224)", "+ SNP", f"{TIMM} (tiny384)", "+ SNP"]
    cells = frame["Raspberry Pi 4B (.onnx)"].tolist()
    # 5 samples each: too few for an interval, so the speedups are marked (◇); 4× for 3× fewer MACs is also
    # faster than the MACs explain (↑)
    assert cells == ["100.0", "50.0 (2.00×)◇", "400.0", "100.0 (4.00×)◇↑"]
    assert table.rows["macs_ratio"].tolist()[1::2] == [pytest.approx(2.0), pytest.approx(3.0)]


def test_table_puts_a_pruned_entry_under_its_base():
    records = [record("deit_tiny", "original", 100.0), record("my_base", "original", 120.0),
               record("deit_tiny_snp", "snp:paper", 60.0, base="my_base", macs=500_000_000)]
    (table,) = build_tables(records, "r", model_order=["deit_tiny", "deit_tiny_snp", "my_base"], plain=True)
    frame = display_frame(table)
    assert frame["model"].tolist() == [f"{TIMM} (deit_tiny)", f"{TIMM} (my_base)", "+ SNP"]
    assert frame["Raspberry Pi 4B (.onnx)"].tolist() == ["100.0", "120.0", "60.0 (2.00×)◇"]


def test_figures_use_the_same_pairs(tmp_path):
    records = two_originals_of_one_timm_model()
    bars = figures.speedup_bars(records, tmp_path)
    assert sorted(bars.data["speedup"]) == [pytest.approx(2.0), pytest.approx(4.0)]
    bubbles = figures.latency_vs_params(records, tmp_path)
    texts = sorted(t.get_text() for ax in bubbles.figure.get_axes() for t in ax.texts if t.get_gid() == "speedup")
    assert texts == ["2.00×", "4.00×"]

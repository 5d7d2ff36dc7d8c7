"""`bench table`: the paper's speedup table from a real local sweep's store, plus synthetic warning records.

The real store comes from an in-process sweep of a 2-block DeiT-T at 64x64
(as in test_sweep.py); the warning cases (throttling, high CV, few samples,
provider fallback, errors) are records built with ``make_record`` from agent
results shaped like the agent's, since a healthy machine produces none of them
on demand.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess

import pandas as pd
import pytest

from harness import config as harness_config
from bench.cli import main
from harness.runner import SweepRequest, run_sweep
from helpers import local_device, tiny_sweep_toml
from results.records import make_record
from results.runs import pick_run
from results.store import Store, StoreError
from results.table import build_tables, display_frame, fmt_ms, record_reasons, render, render_run


CELL = re.compile(r"^(?P<ms>[\d.]+)(?: · (?P<speedup>[\d.]+)×(?: \((?P<low>[\d.]+)–(?P<high>[\d.]+)\))?)?"
                  r"(?P<marks>[†‡§◇♭↑¶‖*]*)$")
PLAIN_CELL = re.compile(r"^(?P<ms>[\d.]+)(?: \((?P<speedup>[\d.]+)×\))?(?P<marks>[†‡§◇♭↑¶‖*]*)$")


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A real sweep: 2 models x (onnx, torchscript) on the local machine; returns (config path, store, run id)."""
    tmp = tmp_path_factory.mktemp("table_sweep")
    cfg_path = tmp / "bench.toml"
    cfg_path.write_text(tiny_sweep_toml(tmp, tmp / "artifacts", local_device("box", tmp / "dev", label="Test Box #1"),
                                        iterations=20, tiny_extra='label = "DeiT-T_2blk"\ntop1 = 72.2'))
    cfg = harness_config.load(cfg_path)
    store = Store(cfg.store)
    outcome = run_sweep(cfg, store, SweepRequest())
    assert not outcome.errors, outcome.errors
    return cfg_path, store, outcome.run_id


def agent_result(median_ms: float, *, n: int = 10, cv: float = 0.01, warnings=(), fallback=None, env=None,
                 iterations: int = 10, group: str | None = None, rounds: int = 5) -> dict:
    """An ok member result: n samples spread ±0.5 % symmetrically around the median (so the median is exact),
    in `rounds` interleaved rounds of comparison group `group` (None: no rounds, the protocol-1 shape)."""
    ns = int(median_ms * 1e6)
    offsets = [(2 * k - (n - 1)) / max(n - 1, 1) for k in range(n)]  # -1 .. 1, symmetric
    order = sorted(range(n), key=lambda k: (k * 7919) % n)  # a fixed shuffle: no trend over the rounds
    samples = [round(ns * (1 + 0.005 * offsets[k])) for k in order]
    result = {"status": "ok", "samples_ns": samples,
              "stats": {"n": n, "min_ns": min(samples), "median_ns": ns, "mean_ns": ns, "max_ns": max(samples),
                        "p90_ns": ns, "p99_ns": ns, "std_ns": int(ns * cv), "cv": cv},
              "env": env or {"cpu": "test", "before": {}, "after": {}}, "warnings": list(warnings),
              "provider_fallback": fallback, "settings": {"measure": {"iterations": iterations, "min_seconds": 0}}}
    if group is not None:
        result.update(group_key=group, rounds=rounds, sample_rounds=[k % rounds for k in range(n)])
    return result


def error_result(stage: str, message: str) -> dict:
    return {"status": "error", "error": {"stage": stage, "type": "RuntimeError", "message": message}}


def job(model: str, variant: str, device: str, fmt: str, runtime: str, macs: int, entry: str,
        label: str, top1=None, batch: int = 1) -> dict:
    sha = format(abs(hash((model, variant, fmt))) % (1 << 60), "064x")
    return {"model": model, "variant": variant, "entry": entry, "device": device, "device_label": label,
            "runtime": runtime, "runtime_options": {}, "batch_size": batch, "input_shape": [batch, 3, 8, 8],
            "artifact": {"sha256": sha, "format": fmt, "macs": macs, "params": macs // 100}, "top1": top1}


PI = ("pi", "onnx", "onnxruntime", "Raspberry Pi 4B")
XEON = ("xeon", "torchscript", "torch", "Xeon_4210R & co")
MODEL = "my_vit_100%"  # underscores, a percent sign: LaTeX must escape them


def synthetic_records(run_id: str) -> list[dict]:
    throttled = {"cpu": "x", "before": {"pi_throttled": {"raw": "0x0", "flags": []}},
                 "after": {"pi_throttled": {"raw": "0x4", "flags": ["throttled_now"]}}}
    out = []

    def add(variant, dev, result, macs, model=MODEL, entry=None):
        name, fmt, runtime, label = dev
        entry = entry or ("orig" if variant == "original" else "pruned")
        out.append(make_record(run_id, job(model, variant, name, fmt, runtime, macs, entry, label,
                                           top1=72.2 if variant == "original" else 70.2),
                               result, "rev"))

    add("original", PI, agent_result(139.1, n=3, warnings=["fewer samples than asked: 3 of 10 (stopped at timeout)"],
                                     group="g-pi", rounds=3), 1_254_000_000)
    add("snp:paper", PI, agent_result(81.6, cv=0.08, group="g-pi", rounds=3), 638_000_000)
    add("original", XEON, agent_result(34.7, env=throttled, group="g-xeon"), 1_254_000_000)
    add("snp:paper", XEON, agent_result(25.3, fallback=True, group="g-xeon",
                                        warnings=["provider fallback: requested CUDAExecutionProvider but ..."]),
        638_000_000)
    add("original", PI, error_result("load", "out of memory {&}"), 4_600_000_000, model="other_vit", entry="o2")
    add("original", XEON, agent_result(53.4, cv=0.04), 4_600_000_000, model="other_vit", entry="o2")
    return out


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("table_synth") / "bench.sqlite"
    store = Store(path)
    old = store.new_run({"devices": ["xeon"], "models": []}, "rev")
    store.add_record(make_record(old, job("older", "original", *XEON[:1], "onnx", "onnxruntime", 1, "e", "L"),
                                 agent_result(1.0), "rev"))
    run_id = store.new_run({"devices": ["pi", "xeon"], "models": ["orig", "pruned", "o2"]}, "rev")
    for record in synthetic_records(run_id):
        store.add_record(record)
    return path, store, run_id, old


def cli(capsys, *args) -> tuple[int, str, str]:
    rc = main(["table", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def markdown_cells(text: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the first markdown table in `text`."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    split = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return split[0], split[2:]


# --------------------------------------------------------------------------
# Real store
# --------------------------------------------------------------------------

def test_markdown_speedups_recomputed_from_store(swept, capsys):
    cfg, store, run_id = swept
    rc, out, _ = cli(capsys, "--config", cfg)  # default: the latest (only) run
    assert rc == 0
    assert f"run {run_id}" in out
    header, rows = markdown_cells(out)
    assert header[:5] == ["model", "variant", "Top-1", "GMACs", "Params (M)"]
    assert header[5:] == ["Test Box #1 (.onnx)", "Test Box #1 (.pt)"]
    assert [r[0] for r in rows] == ["DeiT-T_2blk", "+ L2"]  # original first, the pruned variant indented as "+ ..."
    assert rows[1][1] == "l2:embed=0.25,ffn=0.5,qk=0.5,v=0.5" and rows[0][2] == "72.2" and rows[1][2] == ""

    records = store.records(run_id)
    # the harness passes the entry, its base, labels and Top-1 as record columns
    assert {(r["entry"], r["base_entry"], r["label"], r["device_label"], r["top1"]) for r in records} == {
        ("tiny", None, "DeiT-T_2blk", "Test Box #1", 72.2), ("tiny_snp", "tiny", None, "Test Box #1", None)}
    by = {(r["variant"] == "original", r["format"]): r for r in records}
    assert rows[0][3] == f"{by[True, 'onnx']['macs'] / 1e9:.3g}"
    for col, fmt in ((5, "onnx"), (6, "torchscript")):
        orig, pruned = by[True, fmt], by[False, fmt]
        o = CELL.match(rows[0][col])
        p = CELL.match(rows[1][col])
        assert o and p, (rows[0][col], rows[1][col])
        assert o["speedup"] is None  # the original's own cell has no speedup
        assert o["ms"] == fmt_ms(orig["median_ms"]) and p["ms"] == fmt_ms(pruned["median_ms"])
        assert float(p["speedup"]) == pytest.approx(round(orig["median_ms"] / pruned["median_ms"], 2), abs=1e-9)
        # the interval of the speedup, from the rounds both were timed in (one comparison group)
        assert orig["group_key"] == pruned["group_key"] and orig["rounds"] == pruned["rounds"] >= 1
        assert float(p["low"]) <= float(p["speedup"]) <= float(p["high"])
        for rec, m in ((orig, o), (pruned, p)):  # the real records' cv decides the ‡ marker
            assert ("‡" in m["marks"]) == (rec["cv"] > 0.05)
    # the paper's layout, on request
    rc, out, _ = cli(capsys, "--config", cfg, "--plain")
    _, rows = markdown_cells(out)
    assert all(PLAIN_CELL.match(c) for r in rows for c in r[5:]), rows


def test_efficiency_and_csv_numbers(swept, capsys):
    cfg, store, run_id = swept
    rc, out, _ = cli(capsys, "--config", cfg, "--run", run_id, "--format", "csv", "--efficiency")
    assert rc == 0
    df = pd.read_csv(io.StringIO(out))
    assert list(df["variant"]) == ["original", "l2:embed=0.25,ffn=0.5,qk=0.5,v=0.5"]
    records = {(r["variant"] == "original", r["format"]): r for r in store.records(run_id)}
    for label, fmt in (("Test Box #1 (.onnx)", "onnx"), ("Test Box #1 (.pt)", "torchscript")):
        assert pd.api.types.is_float_dtype(df[f"{label} median_ms"])
        orig, pruned = records[True, fmt], records[False, fmt]
        assert df[f"{label} median_ms"].tolist() == pytest.approx([orig["median_ms"], pruned["median_ms"]])
        speedup = orig["median_ms"] / pruned["median_ms"]
        assert pd.isna(df.loc[0, f"{label} speedup"])
        assert df.loc[1, f"{label} speedup"] == pytest.approx(speedup)
        macs_ratio = orig["macs"] / pruned["macs"]
        assert df.loc[1, "macs_ratio"] == pytest.approx(macs_ratio)
        assert df.loc[1, f"{label} efficiency"] == pytest.approx(speedup / macs_ratio)
    assert df["gmacs"].tolist() == pytest.approx([records[True, "onnx"]["macs"] / 1e9,
                                                  records[False, "onnx"]["macs"] / 1e9])

    rc, out, _ = cli(capsys, "--config", cfg, "--efficiency")
    header, rows = markdown_cells(out)
    assert "MACs ratio" in header and "eff. Test Box #1 (.onnx)" in header
    assert rows[0][header.index("MACs ratio")] == "" and rows[1][header.index("MACs ratio")].endswith("×")


def test_html_and_out_file(swept, capsys, tmp_path):
    cfg, _, run_id = swept
    out_file = tmp_path / "sub" / "table.html"
    rc, out, err = cli(capsys, "--config", cfg, "--format", "html", "--out", out_file)
    assert rc == 0 and out == "" and str(out_file) in err  # "wrote ..." is a note on stderr
    text = out_file.read_text()
    assert "<table" in text and "</table>" in text and "Test Box #1 (.onnx)" in text and run_id in text
    assert text.count("<tr") == 3  # header + 2 model rows


# --------------------------------------------------------------------------
# Warnings and errors (synthetic records)
# --------------------------------------------------------------------------

def test_reasons_of_single_records():
    run = "20260101-000000-abcd"
    recs = {(r["model"], r["variant"], r["device"]): r for r in synthetic_records(run)}
    assert record_reasons(recs[MODEL, "original", "pi"]) == [("samples", "3 of 10 (stopped at timeout)")]
    assert record_reasons(recs[MODEL, "snp:paper", "pi"]) == [("cv", "cv=0.080")]
    assert record_reasons(recs[MODEL, "original", "xeon"]) == [("throttling", "throttled_now")]
    assert [k for k, _ in record_reasons(recs[MODEL, "snp:paper", "xeon"])] == ["fallback"]
    assert record_reasons(recs["other_vit", "original", "pi"]) == [("error", "load: out of memory {&}")]
    assert record_reasons(recs["other_vit", "original", "xeon"]) == []
    assert record_reasons(recs["other_vit", "original", "xeon"], cv_threshold=0.03) == [("cv", "cv=0.040")]
    # n below the iterations asked counts even without the agent's warning; other warnings only on request
    quiet = make_record(run, job("m", "original", "pi", "onnx", "onnxruntime", 1, "e", "L"),
                        agent_result(1.0, n=4, iterations=10, warnings=["cpufreq governor is powersave, ..."]), "r")
    assert record_reasons(quiet) == [("samples", "4 of 10 samples")]
    assert record_reasons(quiet, all_warnings=True)[1] == ("warning", "cpufreq governor is powersave, ...")


def test_markdown_marks_and_footnotes(synthetic, capsys):
    path, _, run_id, _ = synthetic
    rc, out, _ = cli(capsys, "--store", path)
    assert rc == 0 and run_id in out  # the latest run, not the older one
    header, rows = markdown_cells(out)
    assert header[5:] == ["Raspberry Pi 4B (.onnx)", "Xeon_4210R & co (.pt)"]
    cells = {(r[0], h): c for r in rows for h, c in zip(header, r)}
    assert [r[0] for r in rows] == [MODEL, "+ SNP", "other_vit"]
    assert cells[MODEL, "Raspberry Pi 4B (.onnx)"] == "139.1§"
    # its original has 3 samples: no interval (◇), and the original's shortfall marks the speedup too (§)
    assert cells["+ SNP", "Raspberry Pi 4B (.onnx)"] == "81.6 · 1.70×‡§◇"
    assert cells[MODEL, "Xeon_4210R & co (.pt)"] == "34.7†"
    # one group, one device: the throttling its original saw marks the speedup (†)
    xeon = CELL.match(cells["+ SNP", "Xeon_4210R & co (.pt)"])
    assert xeon and xeon["speedup"] == "1.37" and xeon["marks"] == "†¶", cells["+ SNP", "Xeon_4210R & co (.pt)"]
    assert float(xeon["low"]) - 0.005 <= 34.7 / 25.3 <= float(xeon["high"]) + 0.005  # two decimals shown
    assert float(xeon["high"]) - float(xeon["low"]) < 0.05
    assert cells["other_vit", "Raspberry Pi 4B (.onnx)"] == "error*"
    assert cells["other_vit", "Xeon_4210R & co (.pt)"] == "53.4"  # cv 0.04 is under the default 0.05
    notes = [ln for ln in out.splitlines() if ln.startswith("- ")]
    assert [n.split()[1] for n in notes] == ["†", "‡", "§", "◇", "¶", "\\*"]  # "- *" would nest a markdown list
    assert ("◇ speedup interval wider than 10 % of the speedup: my_vit_100% snp:paper, Raspberry Pi 4B (.onnx): "
            "no confidence interval (fewer than 10 samples)") in out
    assert "my_vit_100% snp:paper, Raspberry Pi 4B (.onnx): original: 3 of 10 (stopped at timeout)" in out
    assert "my_vit_100% snp:paper, Xeon_4210R & co (.pt): throttled_now" in out
    # --plain: the paper's cells, the same markers
    rc, out, _ = cli(capsys, "--store", path, "--plain")
    header, rows = markdown_cells(out)
    cells = {(r[0], h): c for r in rows for h, c in zip(header, r)}
    assert cells["+ SNP", "Raspberry Pi 4B (.onnx)"] == "81.6 (1.70×)‡§◇"
    assert cells["+ SNP", "Xeon_4210R & co (.pt)"] == "25.3 (1.37×)†¶"
    assert "‡ high variation: CV above 0.05: my_vit_100% snp:paper, Raspberry Pi 4B (.onnx): cv=0.080" in out
    assert "\\* the job failed: other_vit, Raspberry Pi 4B (.onnx): load: out of memory {&}" in out
    assert "¶ execution provider fell back: my_vit_100% snp:paper, Xeon_4210R & co (.pt): requested CUDA" in out
    assert "§ fewer samples than asked: my_vit_100%, Raspberry Pi 4B (.onnx): 3 of 10 (stopped at timeout)" in out

    rc, out, _ = cli(capsys, "--store", path, "--cv-threshold", "0.03")
    _, rows = markdown_cells(out)
    assert rows[2][6] == "53.4‡" and "CV above 0.03" in out


def test_csv_keeps_numbers_and_reasons(synthetic, capsys):
    path, _, _, _ = synthetic
    rc, out, _ = cli(capsys, "--store", path, "--format", "csv")
    df = pd.read_csv(io.StringIO(out))
    pi = "Raspberry Pi 4B (.onnx)"
    assert df[f"{pi} median_ms"].tolist()[:2] == pytest.approx([139.1, 81.6]) and pd.isna(df[f"{pi} median_ms"][2])
    assert df[f"{pi} status"].tolist() == ["ok", "ok", "error"]
    assert df[f"{pi} notes"][1] == ("cv: cv=0.080; samples: original: 3 of 10 (stopped at timeout); "
                                    "wide: no confidence interval (fewer than 10 samples)")
    assert df[f"{pi} notes"][2].startswith("error: load:")
    assert df["top1"].tolist() == [72.2, 70.2, 72.2]
    xeon = "Xeon_4210R & co (.pt)"
    assert pd.isna(df[f"{xeon} speedup_low"][0]) and pd.isna(df[f"{pi} speedup_low"][1])  # original; no interval
    assert df[f"{xeon} speedup_low"][1] <= df[f"{xeon} speedup"][1] <= df[f"{xeon} speedup_high"][1]


def test_html_escapes_and_lists_notes(synthetic, capsys):
    path, _, _, _ = synthetic
    rc, out, _ = cli(capsys, "--store", path, "--format", "html")
    assert rc == 0 and "<table" in out and "Xeon_4210R &amp; co (.pt)" in out
    assert '<ul class="footnotes">' in out and "out of memory {&amp;}" in out


def test_unknown_run_is_one_line_error(synthetic, capsys):
    path, _, run_id, old = synthetic
    rc, out, err = cli(capsys, "--store", path, "--run", "nope")
    assert rc == 2 and out == ""
    error = [line for line in err.splitlines() if line.startswith("error: ")]  # after the config's one line
    assert len(error) == 1 and "unknown run 'nope'" in error[0] and run_id in error[0] and old in error[0]
    rc, _, err = cli(capsys, "--store", path, "--batch", "8")
    assert rc == 2 and "no records for batch size(s) 8" in err
    with pytest.raises(StoreError, match="recent runs"):
        pick_run(Store(path), "nope")


def test_one_table_per_batch_size():
    run = "20260101-000000-abcd"
    recs = []
    for batch, (o, p) in ((1, (10.0, 5.0)), (8, (60.0, 40.0))):
        for variant, ms, macs in (("original", o, 200), ("snp:paper", p, 100)):
            recs.append(make_record(run, job("m", variant, "pi", "onnx", "onnxruntime", macs, variant, "Pi",
                                             batch=batch), agent_result(ms), "r"))
    tables = build_tables(recs, run)
    assert [t.batch_size for t in tables] == [1, 8]
    md = render(tables, "md")
    assert "**Batch size 1**" in md and "**Batch size 8**" in md
    assert "5.00 · 2.00×" in md and "40.0 · 1.50×" in md
    assert "5.00 (2.00×)" in render(build_tables(recs, run, plain=True), "md")
    csv = pd.read_csv(io.StringIO(render(tables, "csv")))
    assert csv["batch_size"].tolist() == [1, 1, 8, 8]
    assert build_tables(recs, run, batches=[8])[0].batch_size == 8


def group_records(run: str, batch: int, drift: float = 0.0, noisy: bool = False, pruned_ms: float = 10.5
                  ) -> list[dict]:
    """An original (20 ms, 200 MACs) and its pruned model (`pruned_ms`, 100 MACs) timed together in 10 interleaved
    rounds (agent protocol 2), with cold start and memory; the original's rounds drift by `drift` in all, `noisy`
    gives the pair 10 % round effects."""
    import numpy as np

    rng = np.random.default_rng(batch)
    out = []
    for variant, ms, macs in (("original", 20.0, 200), ("snp:paper", pruned_ms, 100)):
        trend = np.linspace(0, drift if variant == "original" else 0.0, 10)
        own = rng.normal(0, 0.10 if noisy else 0.002, 10)
        samples = [int(ms * 1e6 * np.exp(trend[r] + own[r] + rng.normal(0, 0.01))) for r in range(10) for _ in range(30)]
        a = np.asarray(samples, dtype=float)
        result = {"status": "ok", "samples_ns": samples, "sample_rounds": [r for r in range(10) for _ in range(30)],
                  "rounds": 10, "group_key": f"g{batch}",
                  "stats": {"n": a.size, "median_ns": float(np.median(a)), "min_ns": int(a.min()), "max_ns": int(a.max()),
                            "mean_ns": float(a.mean()), "std_ns": float(a.std()), "cv": 0.01},
                  "cold": {"load_s": 0.5 * macs / 100, "build_s": 0.0, "first_inference_ns": int(3 * ms * 1e6),
                           "peak_rss_bytes": macs * 2 ** 20, "gpu_peak_bytes": None},
                  "env": {"before": {}, "after": {}}, "warnings": []}
        out.append(make_record(run, job("m", variant, "pi", "onnx", "onnxruntime", macs, variant, "Pi", batch=batch),
                               result, "r"))
    return out


def test_intervals_validity_and_cold_columns():
    run = "20260101-000000-abcd"
    (quiet,) = build_tables(group_records(run, 1), run)
    cell = quiet.cells.dropna(subset=["speedup"]).iloc[0]
    assert cell["speedup_low"] < cell["speedup"] < cell["speedup_high"] and cell["reasons"] == []
    (drifting,) = build_tables(group_records(run, 1, drift=0.08), run)
    (noisy,) = build_tables(group_records(run, 1, noisy=True), run)
    assert drifting.cells.dropna(subset=["speedup"]).iloc[0]["reasons"] == ["drift"]
    assert "wide" in noisy.cells.dropna(subset=["speedup"]).iloc[0]["reasons"]
    md = render([drifting], "md")
    assert "- ♭ the original's latency drifted across the rounds: m snp:paper, Pi (.onnx): original: trend +" in md
    assert "◇" not in render(build_tables(group_records(run, 1, noisy=True), run, thresholds={"max_width": 5.0}), "md")

    tables = build_tables(group_records(run, 1) + group_records(run, 8), run, cold=True)
    frames = [display_frame(t) for t in tables]
    assert [c for c in frames[0].columns if c.endswith("(.onnx)")] == [
        "Pi (.onnx)", "load s Pi (.onnx)", "1st inference ms Pi (.onnx)", "peak RSS MiB Pi (.onnx)"]
    assert frames[0]["load s Pi (.onnx)"].tolist() == ["1.00", "0.500"]
    assert frames[0]["peak RSS MiB Pi (.onnx)"].tolist() == ["200", "100"]
    assert "img/s Pi (.onnx)" not in frames[0]  # batch 1: throughput is 1000 / the median already shown
    pruned_ms = tables[1].cells.set_index("row")["median_ms"][1]
    assert float(frames[1]["img/s Pi (.onnx)"][1]) == pytest.approx(8 / (pruned_ms / 1e3), rel=5e-3)
    csv = pd.read_csv(io.StringIO(render(tables, "csv")))
    assert csv["Pi (.onnx) peak_rss_mb"].tolist() == [200.0, 100.0, 200.0, 100.0]
    assert csv["Pi (.onnx) throughput_ips"].notna().all()


def test_efficiency_above_one_is_never_shown_unmarked():
    """A speedup beyond the MACs ratio (here 2.5× for 2× fewer MACs) is marked ↑ in its cell, its efficiency
    and the footnote, which names the efficiency and the interval; an efficiency below 1.0 is not marked."""
    run = "20260101-000000-abcd"
    (fast,) = build_tables(group_records(run, 1, pruned_ms=8.0), run, efficiency=True)
    cell = fast.cells.dropna(subset=["speedup"]).iloc[0]
    assert cell["efficiency"] == pytest.approx(1.25, rel=0.02) and cell["reasons"] == ["superlinear"]
    frame = display_frame(fast)
    assert frame["eff. Pi (.onnx)"].tolist() == ["", "1.25↑"]
    assert CELL.match(frame["Pi (.onnx)"][1])["marks"] == "↑"
    md = render([fast], "md")
    assert re.search(r"- ↑ speedup above the MACs ratio \(efficiency above 1.0\): m snp:paper, Pi \(.onnx\): "
                     r"efficiency 1.2\d: speedup 2.5\d× \(2.\d\d–2.\d\d\) above the MACs ratio 2.00×", md), md
    (slow,) = build_tables(group_records(run, 1, pruned_ms=11.0), run, efficiency=True)
    assert display_frame(slow)["eff. Pi (.onnx)"].tolist() == ["", "0.91"]
    assert "↑" not in render([slow], "md")


def test_render_run_is_the_table_command(synthetic, capsys):
    path, store, run_id, _ = synthetic
    rc, out, _ = cli(capsys, "--store", path, "--run", run_id)
    assert rc == 0 and out == render_run(store, run_id)
    rc, out, _ = cli(capsys, "--store", path, "--run", run_id, "--plain", "--format", "latex")
    assert out == render_run(store, run_id, "latex", plain=True)
    with pytest.raises(StoreError):
        render_run(store, "nope")


# --------------------------------------------------------------------------
# LaTeX
# --------------------------------------------------------------------------

def check_latex(text: str) -> list[str]:
    """Structural checks; returns the tabular rows (between \\toprule and \\bottomrule, rules excluded)."""
    body = "\n".join(ln for ln in text.splitlines() if not ln.startswith("%"))
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{([^}]*)\}", body):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack.pop() == env, f"unbalanced \\end{{{env}}}"
    assert not stack, f"unclosed environments {stack}"
    assert body.count("{") - body.count(r"\{") == body.count("}") - body.count(r"\}")
    rows = []
    for spec, tab in re.findall(r"\\begin\{tabular\}\{([^}]*)\}(.*?)\\end\{tabular\}", body, re.S):
        ncols = len(re.findall(r"[lcr]", spec))
        table_rows = [ln for ln in tab.strip().splitlines() if not re.fullmatch(r"\\(top|mid|bottom)rule", ln)]
        assert table_rows
        for row in table_rows:
            assert row.endswith(r"\\"), row
            assert len(re.findall(r"(?<!\\)&", row)) == ncols - 1, row
        rows += table_rows
    # nothing special left unescaped: every _ % # is escaped (& is checked per row above)
    assert not re.search(r"(?<!\\)[_%#]", body), "unescaped special character"
    outside = re.sub(r"\\begin\{tabular\}.*?\\end\{tabular\}", "", body, flags=re.S)
    assert not re.search(r"(?<!\\)&", outside), "unescaped & in caption or notes"
    assert not re.search("[†‡§◇♭¶×–·ρ]", body), "a character LaTeX's default fonts lack"
    return rows


def test_latex_structure_and_escaping(synthetic, swept, capsys):
    path, _, _, _ = synthetic
    rc, out, _ = cli(capsys, "--store", path, "--format", "latex", "--efficiency")
    assert rc == 0
    rows = check_latex(out)
    assert r"\toprule" in out and r"\midrule" in out and r"\bottomrule" in out
    assert r"my\_vit\_100\%" in out and r"Xeon\_4210R \& co (.pt)" in out
    assert r"\quad{}+ SNP" in out
    assert r"81.6 $\cdot$ 1.70$\times$\textsuperscript{\ddag}\textsuperscript{\S}\textsuperscript{$\diamond$}" in out
    assert re.search(r"25\.3 \$\\cdot\$ 1\.37\$\\times\$ \(1\.\d\d--1\.\d\d\)\\textsuperscript", out)
    assert r"error\textsuperscript{*}" in out and r"\footnotesize" in out
    assert r"out of memory \{\&\}" in out
    assert len(rows) == 4  # header + 3 model rows

    cfg, _, _ = swept
    rc, real, _ = cli(capsys, "--config", cfg, "--format", "latex")
    assert len(check_latex(real)) == 3 and r"Test Box \#1 (.onnx)" in real and r"DeiT-T\_2blk" in real


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
def test_latex_compiles(synthetic, swept, tmp_path, capsys):
    path, _, _, _ = synthetic
    cfg, _, _ = swept
    tables = [cli(capsys, "--store", path, "--format", "latex", "--efficiency")[1],
              cli(capsys, "--config", cfg, "--format", "latex", "--efficiency")[1]]
    doc = tmp_path / "doc.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage[T1]{fontenc}\n\\usepackage[utf8]{inputenc}\n"
                   "\\usepackage{booktabs}\n\\usepackage[margin=1cm,landscape]{geometry}\n"
                   "\\begin{document}\n" + "\n".join(tables) + "\n\\end{document}\n")
    r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000
    assert "Missing character" not in (tmp_path / "doc.log").read_text(errors="replace")

"""`results.figures` and `bench figures`: the four figure kinds from a real tiny sweep plus synthetic records.

The store holds one run: a real local sweep of a 2-block 64x64 DeiT-T and an
l2-pruned variant (onnx + torchscript, no Top-1), plus synthetic records shaped
like the paper's table (DeiT-T/S/B and their SNP variants on a Raspberry Pi and a
Jetson Nano, with Top-1). Every plotted point is checked against the stored
medians twice: in the data the function returns and in the Axes' artists.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import matplotlib
import matplotlib.image
import numpy as np
import pytest
from matplotlib.collections import PathCollection
from matplotlib.container import ErrorbarContainer
from matplotlib.patches import Rectangle

from harness import config as harness_config
from bench.cli import main
from harness.runner import SweepRequest, run_sweep
from helpers import local_device, tiny_sweep_toml
from results import figures, style
from results.records import make_record
from results.store import Store


# timm, variant, entry, GMACs, M params, top-1, median ms on (pi, jetson): docs/design.md §3
PAPER = [
    ("deit_tiny_patch16_224", "original", "deit_tiny", 1.254, 5.72, 72.2, (139.1, 41.0)),
    ("deit_tiny_patch16_224", "snp:deit_tiny", "deit_tiny_snp", 0.638, 3.01, 70.29, (81.6, 26.7)),
    ("deit_small_patch16_224", "original", "deit_small", 4.6, 22.05, 79.8, (401.3, 99.3)),
    ("deit_small_patch16_224", "snp:deit_small", "deit_small_snp", 2.037, 10.06, 78.52, (199.2, 45.5)),
    ("deit_small_patch16_224", "snp:deit_small_1.3g", "deit_small_snp13", 1.265, 6.47, 73.32, (136.7, 32.0)),
    ("deit_base_patch16_224", "original", "deit_base", 17.58, 86.57, 81.8, (1377.7, 293.3)),
    ("deit_base_patch16_224", "snp:deit_base", "deit_base_snp", 6.322, 31.59, 79.63, (565.7, 132.6)),
]
DEVICES = [("pi", "Raspberry Pi 4B", "onnxruntime", "onnx"), ("jetson", "Jetson Nano", "tensorrt", "trt")]


def paper_records(run_id: str, n: int = 300) -> list[dict]:
    """Synthetic ok records through make_record, as the sweep builds them (samples consistent with the stats)."""
    rng = np.random.default_rng(0)
    out = []
    for timm, variant, entry, gmacs, mparams, top1, medians in PAPER:
        for (device, label, runtime, fmt), ms in zip(DEVICES, medians):
            samples = (ms * 1e6 * rng.lognormal(0, 0.02, n)).astype(np.int64)
            samples[rng.choice(n, 5)] = int(ms * 1.5e6)  # a few slow iterations
            stats = {"n": n, "median_ns": float(np.median(samples)), "min_ns": int(samples.min()),
                     "mean_ns": float(samples.mean()), "max_ns": int(samples.max())}
            job = {"model": timm, "variant": variant, "entry": entry, "device": device, "device_label": label,
                   "runtime": runtime, "runtime_options": {}, "batch_size": 1, "input_shape": [1, 3, 224, 224],
                   "artifact": {"sha256": hashlib.sha256(f"{timm}{variant}{fmt}".encode()).hexdigest(),
                                "format": fmt, "macs": int(gmacs * 1e9), "params": int(mparams * 1e6)},
                   "top1": top1}
            result = {"status": "ok", "samples_ns": samples.tolist(), "stats": stats, "agent_version": "test"}
            out.append(make_record(run_id, job, result, "test"))
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Store, str]:
    tmp = tmp_path_factory.mktemp("figures")
    path = tmp / "bench.toml"
    path.write_text(tiny_sweep_toml(tmp, tmp / "artifacts", local_device("local", tmp / "dev", label="this machine"),
                                    iterations=30))
    cfg = harness_config.load(path)
    store = Store(cfg.store)
    outcome = run_sweep(cfg, store, SweepRequest())
    assert not outcome.errors, outcome.errors
    for record in paper_records(outcome.run_id):
        store.add_record(record)
    # a failed job: must be ignored by every figure
    failed = dict(paper_records(outcome.run_id)[0], job_key="failed", status="error", error_stage="load", error_message="boom",
                  median_ms=None, samples_ns=[], device="pi")
    store.add_record(failed)
    return store, outcome.run_id


@pytest.fixture(scope="module")
def records(run) -> list[dict]:
    store, run_id = run
    return store.records(run_id)


@pytest.fixture(scope="module")
def ok(records) -> list[dict]:
    return [r for r in records if r["status"] == "ok"]


@pytest.fixture(scope="module")
def drawn(records, tmp_path_factory) -> tuple[dict[str, figures.FigureResult], Path, dict]:
    out = tmp_path_factory.mktemp("figs")
    before = dict(matplotlib.rcParams)
    results = figures.make_figures(records, out)
    return results, out, before


def gid_points(fig) -> Counter:
    """(gid, x, y) of every single-point scatter with a gid, over all visible Axes (subfigures included)."""
    points = Counter()
    for ax in fig.get_axes():
        if not ax.get_visible():
            continue
        for coll in ax.collections:
            if isinstance(coll, PathCollection) and coll.get_gid() and "|" in coll.get_gid():
                for x, y in np.asarray(coll.get_offsets()):
                    points[(coll.get_gid(), round(float(x), 9), round(float(y), 9))] += 1
    return points


def key(r: dict) -> str:
    return f"{r['model']}|{r['variant']}"


def test_sweep_store_has_real_and_synthetic_records(ok):
    devices = Counter(r["device"] for r in ok)
    assert devices == {"local": 4, "pi": 7, "jetson": 7}
    assert all(r["top1"] is None for r in ok if r["device"] == "local")
    assert all(len(r["samples_ns"]) == r["n"] > 0 for r in ok)


def test_all_four_kinds_written_as_png_and_pdf(drawn):
    results, out, _ = drawn
    assert list(results) == ["latency_vs_params", "accuracy_vs_latency", "speedup", "latency_distribution"]
    for kind, result in results.items():
        png, pdf = result.paths
        assert png.suffix == ".png" and pdf.suffix == ".pdf" and png.parent == pdf.parent == out
        assert png.stat().st_size > 20_000, kind
        assert pdf.stat().st_size > 8_000, kind
        assert pdf.read_bytes().startswith(b"%PDF")
        width, height = result.figure.get_size_inches()
        pixels = matplotlib.image.imread(png)
        assert pixels.shape[:2] == (round(height * style.DPI), round(width * style.DPI)), kind
        assert pixels[..., :3].std() > 0.05, kind  # not a blank image
        assert width in (style.SINGLE_COLUMN_IN, style.DOUBLE_COLUMN_IN)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}.{ext}" for stem in ("latency_vs_params", "accuracy_vs_latency", "speedup", "latency_distribution")
        for ext in ("png", "pdf"))


def test_matplotlib_global_state_untouched(drawn):
    results, _, before = drawn
    assert dict(matplotlib.rcParams) == before
    assert all(type(r.figure.canvas).__name__ == "FigureCanvasAgg" for r in results.values())


def test_latency_vs_params_points_are_the_stored_medians(drawn, ok):
    result = drawn[0]["latency_vs_params"]
    expected = Counter((key(r), round(r["params"] / 1e6, 9), round(r["median_ms"], 9)) for r in ok)
    assert gid_points(result.figure) == expected
    data = Counter((f"{m}|{v}", round(x, 9), round(y, 9))
                   for m, v, x, y in result.data[["model", "variant", "params_m", "median_ms"]].itertuples(index=False))
    assert data == expected
    macs = {(key(r), r["device"], r["format"]): r["macs"] / 1e9 for r in ok}
    assert [macs[(f"{m}|{v}", d, f)] for m, v, d, f in result.data[["model", "variant", "device", "format"]]
            .itertuples(index=False)] == result.data["gmacs"].tolist()
    # one panel per device/runtime/format: local onnx, local torchscript, pi, jetson
    titles = [ax.get_title() for ax in result.figure.get_axes() if ax.get_visible()]
    assert titles == ["this machine · onnxruntime (.onnx)", "this machine · PyTorch (.pt)",
                      "Raspberry Pi 4B · onnxruntime (.onnx)", "Jetson Nano · TensorRT (.trt)"]
    for ax in result.figure.get_axes():
        assert ax.get_xlabel() == "params (M)" and ax.get_ylabel() == "latency (ms)"
    # arrows original -> pruned: one per pruned record (4 per paper device, 2 on the local device)
    arrows = [c for ax in result.figure.get_axes() for c in ax.texts if getattr(c, "arrow_patch", None)]
    assert len(arrows) == sum(r["variant"] != "original" for r in ok)


def test_bubble_area_proportional_to_gmacs(drawn, ok):
    fig = drawn[0]["latency_vs_params"].figure
    sizes = {}
    for ax in fig.get_axes():
        for coll in ax.collections:
            if coll.get_gid() and ax.get_title().startswith("Raspberry"):
                sizes[coll.get_gid()] = float(coll.get_sizes()[0])
    macs = {key(r): r["macs"] for r in ok if r["device"] == "pi"}
    ratios = {k: sizes[k] / macs[k] for k in macs}
    assert max(ratios.values()) == pytest.approx(min(ratios.values()), rel=1e-9)


def test_same_colour_for_a_model_and_its_variants(drawn):
    fig = drawn[0]["latency_vs_params"].figure
    colours: dict[str, set] = {}
    for ax in fig.get_axes():
        for coll in ax.collections:
            if coll.get_gid():
                model = coll.get_gid().split("|")[0]
                colours.setdefault(model, set()).add(tuple(np.round(coll.get_facecolor()[0][:3], 4)))
    assert all(len(c) == 1 for c in colours.values())
    assert len({next(iter(c)) for c in colours.values()}) == len(colours)
    blue = tuple(np.round(matplotlib.colors.to_rgb(style.MODEL_COLORS["deit_tiny_patch16_224"]), 4))
    assert colours["deit_tiny_patch16_224"] == {blue}


def test_accuracy_vs_latency_only_records_with_top1(drawn, ok):
    result = drawn[0]["accuracy_vs_latency"]
    with_top1 = [r for r in ok if r["top1"] is not None]
    assert len(with_top1) == 14
    expected = Counter((key(r), round(r["median_ms"], 9), round(r["top1"], 9)) for r in with_top1)
    assert gid_points(result.figure) == expected
    assert sorted(result.data["top1"]) == sorted(r["top1"] for r in with_top1)
    assert {ax.get_ylabel() for ax in result.figure.get_axes()} == {"top-1 accuracy (%)"}


def test_accuracy_skipped_without_top1(ok, tmp_path):
    local = [r for r in ok if r["device"] == "local"]
    result = figures.accuracy_vs_latency(local, tmp_path)
    assert result.paths == [] and result.figure is None and result.data.empty
    assert "top1" in result.skipped
    assert list(tmp_path.iterdir()) == []


def test_speedup_bars_are_stored_median_ratios(drawn, ok):
    result = drawn[0]["speedup"]
    (ax,) = result.figure.get_axes()
    originals = {(r["model"], r["device"], r["format"]): r for r in ok if r["variant"] == "original"}
    expected = {}
    for r in ok:
        if r["variant"] != "original":
            base = originals[(r["model"], r["device"], r["format"])]
            expected[(key(r), r["device"], r["format"])] = (base["median_ms"] / r["median_ms"], base["macs"] / r["macs"])
    bars = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_gid()]
    assert sorted(round(b.get_height(), 9) for b in bars) == sorted(round(s, 9) for s, _ in expected.values())
    got = {(f"{m}|{v}", d, f): (s, mr) for m, v, d, f, s, mr in
           result.data[["model", "variant", "device", "format", "speedup", "macs_ratio"]].itertuples(index=False)}
    assert got.keys() == expected.keys()
    for k, (s, mr) in expected.items():
        assert got[k] == pytest.approx((s, mr), rel=1e-12)
    (marks,) = [c for c in ax.collections if c.get_gid() == "macs_ratio"]
    assert sorted(np.round(marks.get_offsets()[:, 1], 9)) == sorted(round(mr, 9) for _, mr in expected.values())
    # each bar's 95 % interval (results.intervals) as an error bar from low to high, around the bar's top
    assert (result.data["speedup_low"] <= result.data["speedup"]).all()
    assert (result.data["speedup"] <= result.data["speedup_high"]).all()
    errorbars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(errorbars) == len(bars)
    spans = sorted(tuple(np.round(seg[:, 1], 9)) for c in errorbars for seg in c.lines[2][0].get_segments())
    assert spans == sorted((round(lo, 9), round(hi, 9)) for lo, hi in
                           result.data[["speedup_low", "speedup_high"]].itertuples(index=False))
    assert any(list(line.get_ydata()) == [1.0, 1.0] for line in ax.get_lines())  # the 1.0x reference
    assert ax.get_ylabel() == "speedup over original (×)"
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "this machine\nonnxruntime (.onnx)", "this machine\nPyTorch (.pt)", "Raspberry Pi 4B\nonnxruntime (.onnx)",
        "Jetson Nano\nTensorRT (.trt)"]


def test_latency_distribution_from_raw_samples(drawn, ok):
    result = drawn[0]["latency_distribution"]
    assert gid_points(result.figure) == Counter((key(r), 0.0, round(r["median_ms"], 9)) for r in ok)
    for r in ok:
        ms = np.asarray(r["samples_ns"]) / 1e6
        assert np.median(ms) == pytest.approx(r["median_ms"], abs=1e-6)  # the stored median is the samples'
    rows = result.data.set_index(["model", "variant", "device", "format"])
    for r in ok:
        row = rows.loc[(r["model"], r["variant"], r["device"], r["format"])]
        ms = np.asarray(r["samples_ns"]) / 1e6
        assert row["n"] == len(ms) and row["median_ms"] == r["median_ms"]
        assert (row["q1_ms"], row["q3_ms"]) == pytest.approx(tuple(np.percentile(ms, [25, 75])))
    # one row of panels per device/runtime, titled; every visible panel has one violin and a y axis in ms
    titles = [sub._suptitle.get_text() for sub in result.figure.subfigs]
    assert titles[2:] == ["Raspberry Pi 4B · onnxruntime (.onnx)", "Jetson Nano · TensorRT (.trt)"]
    visible = [ax for ax in result.figure.get_axes() if ax.get_visible()]
    assert len(visible) == len(ok)
    assert {ax.get_ylabel() for ax in visible} == {"latency (ms)", ""}


def test_labels():
    assert figures.model_label("deit_tiny_patch16_224") == "DeiT-T"
    assert figures.model_label("deit_small_distilled_patch16_224") == "DeiT-S dist."
    assert figures.model_label("deit3_base_patch16_384") == "DeiT3-B@384"
    assert figures.model_label("vit_base_patch16_224") == "ViT-B/16"
    assert figures.model_label("efficientformer_l1") == "EfficientFormer-L1"
    assert figures.variant_label("snp:paper", 638_000_000) == "SNP 0.6G"
    colours = style.model_colors(["deit_tiny_patch16_224", "a_model", "another_model"])
    assert len(set(colours.values())) == 3
    assert style.model_colors(["a_model"])["a_model"] == style.model_colors(["b", "a_model"])["a_model"]


def test_cli_default_out_and_unknown_run(run, tmp_path, monkeypatch, capsys):
    store, run_id = run
    monkeypatch.chdir(tmp_path)
    assert main(["figures", "--store", str(store.path), "--only", "speedup"]) == 0  # latest run by default
    assert (tmp_path / "runs" / run_id / "figures" / "speedup.png").stat().st_size > 20_000
    assert (tmp_path / "runs" / run_id / "figures" / "speedup.pdf").exists()
    assert "speedup: runs/" in capsys.readouterr().err  # the files written: a note on stderr

    out = tmp_path / "elsewhere"
    assert main(["figures", "--store", str(store.path), "--run", run_id, "--out", str(out),
                 "--only", "accuracy_vs_latency", "--only", "latency_vs_params"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["accuracy_vs_latency.pdf", "accuracy_vs_latency.png",
                                                      "latency_vs_params.pdf", "latency_vs_params.png"]

    assert main(["figures", "--store", str(store.path), "--run", "nope"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]  # after the notes of the calls above
    assert len(errors) == 1 and errors[0].startswith("error: unknown run 'nope'") and err.endswith(errors[0] + "\n")


def test_cli_reports_skipped_accuracy(tmp_path, ok, capsys):
    store = Store(tmp_path / "s.sqlite")
    run_id = store.new_run({}, "test")
    for r in ok:
        if r["device"] == "local":
            store.add_record({k: v for k, v in r.items() if k not in ("id", "inserted")} | {"run_id": run_id})
    assert main(["figures", "--store", str(store.path), "--out", str(tmp_path / "f"),
                 "--only", "accuracy_vs_latency"]) == 0
    assert "accuracy_vs_latency: skipped, no Top-1 values" in capsys.readouterr().err
    assert not (tmp_path / "f").exists()


def test_point_labels_show_speedups_without_overlap(drawn, ok):
    fig = drawn[0]["latency_vs_params"].figure
    renderer = fig.canvas.get_renderer()
    originals = {(r["model"], r["device"], r["format"]): r["median_ms"] for r in ok if r["variant"] == "original"}
    expected = sorted(f"{originals[(r['model'], r['device'], r['format'])] / r['median_ms']:.2f}×"
                      for r in ok if r["variant"] != "original")
    texts = [t for ax in fig.get_axes() for t in ax.texts if t.get_gid() == "speedup"]
    assert sorted(t.get_text() for t in texts) == expected
    for ax in fig.get_axes():
        frame = ax.get_window_extent(renderer)
        boxes = [t.get_window_extent(renderer) for t in ax.texts if t.get_gid() == "speedup"]
        for i, box in enumerate(boxes):
            assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            assert not any(box.overlaps(other) for other in boxes[i + 1:])


def test_batch_sizes_get_their_own_panels(tmp_path):
    one = paper_records("r")[:4]
    eight = [dict(r, batch_size=8, median_ms=r["median_ms"] * 6, job_key=r["job_key"] + "8") for r in one]
    result = figures.latency_vs_params(one + eight, tmp_path)
    titles = [ax.get_title().replace("\n", " · ") for ax in result.figure.get_axes() if ax.get_visible()]
    assert titles == ["Raspberry Pi 4B · onnxruntime (.onnx) · bs 1", "Jetson Nano · TensorRT (.trt) · bs 1",
                      "Raspberry Pi 4B · onnxruntime (.onnx) · bs 8", "Jetson Nano · TensorRT (.trt) · bs 8"]
    assert sorted(result.data["median_ms"]) == sorted(r["median_ms"] for r in one + eight)

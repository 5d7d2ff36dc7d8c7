"""The paper's figures from stored records: PNG (200 dpi) and PDF, sized for a paper column.

One function per kind of figure, each taking the records of one run (the dicts
of ``Store.records``; error records are ignored) and an output folder, and
returning a :class:`FigureResult`: the files written, the data it plotted (one
row per point, bar or violin, values exactly as plotted) and the ``Figure``
itself, so a caller (or a test) can read the plotted artists back.

=========================  ===================================================================
:func:`latency_vs_params`  latency (ms) vs params (M), one panel per device/runtime, bubble
                           area ∝ GMACs, original → pruned as arrows (the paper's "latency
                           vs params on Jetson Nano" figure)
:func:`accuracy_vs_latency`  Top-1 (%) vs latency (ms), bubble area ∝ params (the paper's
                           Fig. 1); only the records whose bench.toml entry has ``top1``.
                           Writes nothing (``paths == []``) when none has
:func:`speedup_bars`       speedup over the original per device/runtime group, one bar per
                           pruned variant with its 95 % confidence interval as an error bar
                           (``results.intervals.speedup_interval``; none for records read
                           without samples), a 1.0× line and the MACs ratio as a marker
                           (speedup efficiency = bar ÷ marker, docs/design.md §3)
:func:`latency_distribution`  every measured iteration (``samples_ns``) as a violin, median,
                           IQR and p1–p99 marked: a row per device/runtime, a small panel
                           with its own ms axis per model and variant
=========================  ===================================================================

Design choices
--------------
* The style is :mod:`results.style` (rcParams, DPI, widths, colours, markers,
  saving): no pyplot, every figure is a ``matplotlib.figure.Figure`` with an
  explicit Agg canvas, styled inside ``matplotlib.rc_context(STYLE)`` so nothing
  leaks into the caller's matplotlib state (nor from one figure into the next).
* A panel is one (device, runtime, format, runtime options, batch size).
  Speedups (bars, arrows, labels) compare the records ``results.speedup.pair_records``
  pairs, the same pairs as the tables. Titles show the device's label and the
  runtime with the artifact's file type as in the paper (``.onnx``, ``.pt``,
  ``.trt``, from the ``formats`` registry), plus the batch size and options only
  where they tell panels apart.
* Colour = model (a fixed palette keyed by the timm name, so DeiT-T is the same
  blue in every figure and every run); the original and its pruned variants share
  it and differ by marker (circle = original) or hatching.
* Widths: 3.3 in (one paper column) for one panel, 7 in (two columns) for more;
  fonts 6.5–8 pt; ``constrained_layout``; legends below the axes, one column per
  model when that fits. Nothing overlaps: speedup labels are placed where they
  cover no marker, arrow or other label; titles wider than their panel and tick
  labels that would collide are broken or slanted after layout.
* Log axes (ticks written 20, 50, 100) where a panel's values span more than 4×,
  as latency and params do across DeiT-T/S/B.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.path import Path as MplPath
from matplotlib.transforms import Bbox

from formats import display_format, display_runtime
from results import intervals
from results.records import options_key
from results.speedup import options_text, pair_indices, speedup_frame
from results.style import (
    DOUBLE_COLUMN_IN,
    SINGLE_COLUMN_IN,
    STYLE,
    VARIANT_HATCHES,
    VARIANT_MARKERS,
    model_colors,
    new_figure,
    save_figure,
)

#: What tells panels apart: one panel per (device, runtime, options, format, batch size).
PANEL_KEYS = ("device", "runtime", "options", "format", "batch_size")

_CRITERIA = {"snp": "SNP", "l2": "ℓ2", "random": "random", "reverse": "reverse", "plan": "plan"}
_SIZES = {"tiny": "T", "small": "S", "medium": "M", "base": "B", "large": "L", "huge": "H"}


@dataclass
class FigureResult:
    """What one figure function did: files written (PNG then PDF; empty when skipped) and what it plotted."""

    kind: str
    paths: list[Path] = field(default_factory=list)
    data: pd.DataFrame = field(default_factory=pd.DataFrame)
    figure: Figure | None = None
    skipped: str | None = None  # why nothing was drawn


# --------------------------------------------------------------------------
# Labels and colours
# --------------------------------------------------------------------------

def model_label(timm_name: str) -> str:
    """Short name of a timm model as papers write it: DeiT-T, DeiT3-S, ViT-B/16, EfficientFormer-L1."""
    m = re.match(r"^(deit3?|vit)_(tiny|small|medium|base|large|huge)_(distilled_)?patch(\d+)_(\d+)", timm_name)
    if m:
        family, size, distilled, patch, res = m.groups()
        name = {"deit": "DeiT", "deit3": "DeiT3", "vit": "ViT"}[family] + "-" + _SIZES[size]
        if family == "vit":
            name += f"/{patch}"
        if distilled:
            name += " dist."
        if res != "224":
            name += f"@{res}"
        return name
    m = re.match(r"^efficientformer_(l\d+)", timm_name)
    if m:
        return f"EfficientFormer-{m.group(1).upper()}"
    return timm_name


def _gmacs_text(gmacs: float) -> str:
    return f"{gmacs:.1f}" if gmacs >= 0.1 else f"{gmacs:.2g}"


def variant_label(variant: str, macs: int | None) -> str:
    """``snp:paper`` with 0.638 GMACs -> ``SNP 0.6G`` (papers tell pruned models apart by their GMACs)."""
    if variant == "original":
        return ""
    criterion = variant.split(":", 1)[0]
    name = _CRITERIA.get(criterion, criterion)
    return f"{name} {_gmacs_text(macs / 1e9)}G" if macs else variant


def _runtime_text(runtime: str, fmt: str) -> str:
    return f"{display_runtime(runtime)} ({display_format(fmt)})"


# --------------------------------------------------------------------------
# Records -> one tidy frame
# --------------------------------------------------------------------------

def plot_frame(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per ok record with a median, with the panel, labels, colour and marker each figure uses.

    Rows come in panel order (devices in the order the run measured them), then
    models by size (smallest original first, as the paper's table), then original
    first and pruned variants by decreasing MACs. ``record_index`` is the row's
    position in `records`, ``base_index`` that of the record it is compared with
    (:func:`results.speedup.pair_indices`; -1 for none).
    """
    bases = dict(pair_indices(records))
    rows = []
    for i, r in enumerate(records):
        if r.get("status") != "ok" or r.get("median_ms") is None:
            continue
        top1 = r.get("top1")
        rows.append({
            "model": r["model"], "variant": r["variant"], "device": r["device"],
            "device_label": str(r.get("device_label") or r["device"]), "runtime": r["runtime"],
            "format": r["format"], "options": options_text(r.get("runtime_options")),
            "options_text": options_key(r.get("runtime_options") or {}), "batch_size": int(r["batch_size"]),
            "macs": r.get("macs"), "params": r.get("params"), "median_ms": float(r["median_ms"]),
            "samples_ns": r.get("samples_ns") or [], "top1": None if top1 is None else float(top1),
            "entry": r.get("entry"), "record_index": i, "base_index": bases.get(i, -1),
        })
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    df["panel"] = list(zip(*(df[k] for k in PANEL_KEYS)))
    df["panel_label"] = _panel_labels(df)
    size = df.groupby("model")["params"].max().fillna(0)
    df["model_rank"] = df["model"].map({m: i for i, m in enumerate(size.sort_values(kind="stable").index)})
    df["panel_rank"] = df["panel"].map({p: i for i, p in enumerate(dict.fromkeys(df["panel"]))})
    df["is_original"] = df["variant"] == "original"
    df["macs_key"] = -df["macs"].fillna(0)
    df = df.sort_values(["panel_rank", "model_rank", "is_original", "macs_key", "variant"],
                        ascending=[True, True, False, True, True], kind="stable").reset_index(drop=True)
    # variant rank within a model, the same in every panel: 0 = original, then by decreasing MACs
    ranks: dict[tuple[str, str], int] = {}
    for model, group in df.groupby("model", sort=False):
        variants = group.drop_duplicates("variant").sort_values(["is_original", "macs_key", "variant"],
                                                                ascending=[False, True, True])
        pruned = [v for v in variants["variant"] if v != "original"]
        ranks.update({(model, v): i + 1 for i, v in enumerate(pruned)})
        ranks[(model, "original")] = 0
    df["variant_rank"] = [ranks[(m, v)] for m, v in zip(df["model"], df["variant"])]
    colors = model_colors(df.sort_values("model_rank", kind="stable")["model"])
    df["color"] = df["model"].map(colors)
    df["marker"] = df["variant_rank"].map(lambda i: VARIANT_MARKERS[i % len(VARIANT_MARKERS)])
    df["hatch"] = df["variant_rank"].map(lambda i: VARIANT_HATCHES[max(i - 1, 0) % len(VARIANT_HATCHES)])
    df["label"] = _point_labels(df)
    return df.drop(columns=["macs_key", "is_original"])


def _panel_labels(df: pd.DataFrame) -> list[str]:
    """"Jetson Nano · TensorRT (.trt)", plus batch size / options only where panels differ by them."""
    base = df["device_label"] + " · " + [_runtime_text(r, f) for r, f in zip(df["runtime"], df["format"])]
    same_place = df.assign(base=base).groupby("base")
    many_batches = same_place["batch_size"].transform("nunique") > 1
    many_options = same_place["options"].transform("nunique") > 1
    labels = []
    for text, bs, opts, mb, mo in zip(base, df["batch_size"], df["options_text"], many_batches, many_options):
        details = ([f"bs {bs}"] if mb or bs != 1 else []) + ([opts] if mo else [])
        labels.append(text + ("\n" + ", ".join(details) if details else ""))
    return labels


def _point_labels(df: pd.DataFrame) -> list[str]:
    """"DeiT-S", "DeiT-S SNP 2.0G": unique per (model, variant); falls back to the variant text on a clash."""
    first = df.drop_duplicates(["model", "variant"])
    labels = {}
    for model, variant, macs in zip(first["model"], first["variant"], first["macs"]):
        short = variant_label(variant, None if pd.isna(macs) else int(macs))
        labels[(model, variant)] = f"{model_label(model)} {short}".strip()
    counts = pd.Series(list(labels.values())).value_counts()
    for key, text in labels.items():
        if counts[text] > 1:
            labels[key] = f"{model_label(key[0])} {key[1]}"
    return [labels[(m, v)] for m, v in zip(df["model"], df["variant"])]


# --------------------------------------------------------------------------
# Figure plumbing
# --------------------------------------------------------------------------

def _figure(width: float, height: float) -> Figure:
    """`results.style.new_figure` (height in whole 1/8 in: exact pixels) with this module's tight paddings."""
    fig = new_figure(width, height)
    fig.get_layout_engine().set(w_pad=0.03, h_pad=0.03, wspace=0.03, hspace=0.05)
    return fig


def _grid_shape(n_panels: int) -> tuple[int, int]:
    """1 column for one panel; 2 for 2 or 4 panels (2×2); 3 otherwise."""
    ncols = 1 if n_panels == 1 else 2 if n_panels in (2, 4) else 3
    return math.ceil(n_panels / ncols), ncols


def _save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    return save_figure(fig, out_dir, stem, creator="snp-bench results/figures.py")


def _plain_log_axis(axis: Any, span: float) -> None:
    """Log scale with 1-2-5 ticks (1-2-3-5 over less than a decade) as plain numbers (20, 50, 100), not 10^x."""
    subs = (1.0, 2.0, 5.0) if span >= 10 else (1.0, 2.0, 3.0, 5.0)
    axis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def _maybe_log(ax: Any, which: str, values: Iterable[float], span: float) -> bool:
    """Log scale on ``which`` axis when the (positive) values span more than ``span``×."""
    vals = [float(v) for v in values if v is not None and not pd.isna(v) and v > 0]
    if vals and max(vals) / min(vals) > span:
        (ax.set_xscale if which == "x" else ax.set_yscale)("log")
        _plain_log_axis(ax.xaxis if which == "x" else ax.yaxis, max(vals) / min(vals))
        return True
    return False


# --------------------------------------------------------------------------
# Legends: laid out before the figure is, so the figure's height includes them
# --------------------------------------------------------------------------

@dataclass
class _Legend:
    handles: list
    ncols: int
    height: float  # inches
    title: str | None = None

    def draw(self, fig: Figure) -> None:
        fig.legend(handles=self.handles, loc="outside lower center", ncols=self.ncols, title=self.title)


def _blank() -> Line2D:
    return Line2D([], [], ls="none", label=" ")


def _legend_size(handles: list, ncols: int, title: str | None) -> tuple[float, float]:
    scratch = _figure(DOUBLE_COLUMN_IN, 3.0)
    legend = scratch.legend(handles=handles, ncols=ncols, title=title)
    box = legend.get_window_extent(scratch.canvas.get_renderer())
    return box.width / scratch.dpi, box.height / scratch.dpi


def _column_major(columns: list[list]) -> list:
    """Handles in the order matplotlib fills a legend (column by column), each column padded to the same depth."""
    depth = max(len(c) for c in columns)
    return [h for c in columns for h in c + [_blank() for _ in range(depth - len(c))]]


def _row_major(handles: list, ncols: int) -> list:
    """Handles reordered so that the legend reads left to right, row by row (matplotlib fills columns first)."""
    nrows = math.ceil(len(handles) / ncols)
    padded = handles + [_blank() for _ in range(nrows * ncols - len(handles))]
    return _column_major([padded[c::ncols] for c in range(ncols)])


def _plan_legend(width: float, handles: list, columns: list[list] | None = None, title: str | None = None,
                 ) -> _Legend:
    """One column per group (model) when they fit across ``width``, else as many columns as fit, read row-wise."""
    candidates: list[tuple[list, int]] = []
    if columns and len(columns) > 1:
        candidates.append((_column_major(columns), len(columns)))
    candidates += [(_row_major(handles, n), n) for n in range(len(handles), 0, -1)]
    for chosen, ncols in candidates:
        w, h = _legend_size(chosen, ncols, title)
        if w <= width - 0.08:
            break
    return _Legend(chosen, ncols, h + 0.06, title)


def _point_handles(df: pd.DataFrame, kind: str) -> tuple[list, list[list]]:
    """Legend entries per (model, variant) in model colour with the variant's marker (or hatch).

    Returns the flat list (full labels) and the same entries grouped by model,
    where only a model's first entry names the model ("DeiT-S", "SNP 2.0G", ...).
    """
    flat, columns = [], []
    points = df.drop_duplicates(["model", "variant"]).sort_values(["model_rank", "variant_rank"], kind="stable")
    for _, group in points.groupby("model_rank", sort=True):
        column = []
        for i, (_, row) in enumerate(group.iterrows()):
            short = row["label"] if i == 0 else row["label"][len(model_label(row["model"])):].strip() or row["label"]
            for target, label in ((flat, row["label"]), (column, short)):
                if kind == "marker":
                    target.append(Line2D([], [], ls="none", marker=row["marker"], markersize=5, alpha=0.9,
                                         markerfacecolor=row["color"], markeredgecolor="black", markeredgewidth=0.5,
                                         label=label))
                else:
                    target.append(Patch(facecolor=row["color"], edgecolor="black", linewidth=0.5, hatch=row["hatch"],
                                        label=label))
        columns.append(column)
    return flat, columns


# --------------------------------------------------------------------------
# Bubble charts (figures 1 and 2)
# --------------------------------------------------------------------------

def _panels(df: pd.DataFrame) -> list[pd.DataFrame]:
    return [group for _, group in df.groupby("panel_rank", sort=True)]


def _arrow_rows(df: pd.DataFrame) -> list[tuple[int, int]]:
    """(base row, pruned row) of df for each pruned point whose base (`results.speedup` pairing) is plotted too."""
    row_of = dict(zip(df["record_index"], df.index))
    return [(row_of[b], i) for i, b in zip(df.index, df["base_index"]) if b in row_of]


def _bubble_figure(df: pd.DataFrame, x: str, y: str, size: str, xlabel: str, ylabel: str, size_text: str,
                   log_y: bool, side: int) -> Figure:
    """Scatter one PathCollection per point (gid "model|variant"), arrows original -> pruned, and each pruned
    point's speedup written on its ``side`` (1 right, -1 left: away from where the arrows come from)."""
    panels = _panels(df)
    nrows, ncols = _grid_shape(len(panels))
    width = SINGLE_COLUMN_IN if ncols == 1 else DOUBLE_COLUMN_IN
    flat, columns = _point_handles(df, "marker")
    top = df.groupby("panel_rank")[size].transform("max").astype(float)
    scale = "" if top.nunique() <= 1 else " (per panel)"
    legend = _plan_legend(width, flat, columns, title=f"bubble area ∝ {size_text}{scale}; arrow: original → pruned")
    row_h = 2.3 if ncols == 1 else 2.1
    fig = _figure(width, row_h * nrows + legend.height)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    # pt², per panel: its largest value gets a 16 pt wide bubble (one scale for the whole figure would shrink
    # a panel of small models to dots; panels of the same models get the same scale anyway)
    area = (df[size].astype(float) / top.where(top > 0) * 260.0).fillna(40.0)  # unknown size: a plain marker
    arrows = _arrow_rows(df)
    layout: dict[Any, _Labels] = {}
    for ax, panel in zip(axes, panels):
        labels = layout[ax] = _Labels()
        for i, row in panel.iterrows():
            ax.scatter([row[x]], [row[y]], s=[area[i]], c=[row["color"]], marker=row["marker"], edgecolors="black",
                       linewidths=0.5, alpha=0.85, zorder=3, gid=f"{row['model']}|{row['variant']}")
            labels.markers.append(((row[x], row[y]), math.sqrt(area[i]) / 2))
        for src, dst in arrows:
            if dst not in panel.index:
                continue
            start, end = (df.at[src, x], df.at[src, y]), (df.at[dst, x], df.at[dst, y])
            ax.annotate("", xy=end, xytext=start, zorder=2,
                        arrowprops=dict(arrowstyle="-|>", color=df.at[src, "color"], lw=0.9, mutation_scale=7,
                                        shrinkA=math.sqrt(area[src]) / 2 + 1, shrinkB=math.sqrt(area[dst]) / 2 + 1))
            labels.segments.append((start, end))
            speedup = df.at[src, "median_ms"] / df.at[dst, "median_ms"]
            text = ax.annotate(f"{speedup:.2f}×", end, xytext=(0, 0), textcoords="offset points", fontsize=6.5,
                               color="0.15", zorder=4, gid="speedup", annotation_clip=False,
                               bbox=dict(boxstyle="square,pad=0.05", fc="white", ec="none", alpha=0.75))
            text.set_in_layout(False)
            labels.texts.append((text, math.sqrt(area[dst]) / 2, side))
        ax.set_title(panel["panel_label"].iloc[0])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        _maybe_log(ax, "x", panel[x], span=4.0)
        if log_y:
            _maybe_log(ax, "y", panel[y], span=4.0)
        else:
            ax.yaxis.set_major_locator(ticker.MaxNLocator(nbins=6, steps=[1, 2, 5, 10]))
        ax.margins(0.14)
    legend.draw(fig)
    _fit_titles(fig, axes[:len(panels)])
    _place_labels(fig, layout)
    return fig


def _fit_titles(fig: Figure, axes: Sequence[Any]) -> None:
    """Break a panel title wider than its panel after the device name ("Jetson Nano\nTensorRT (.trt)")."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in axes:
        title = ax.title
        if " · " in title.get_text() and title.get_window_extent(renderer).width > ax.get_window_extent(renderer).width:
            title.set_text(title.get_text().replace(" · ", "\n", 1))


@dataclass
class _Labels:
    """What the point labels of one Axes must avoid, and the labels (text, marker radius pt, preferred side)."""

    markers: list = field(default_factory=list)   # ((x, y) data, radius pt)
    segments: list = field(default_factory=list)  # ((x0, y0), (x1, y1)) data: the arrows
    texts: list = field(default_factory=list)


def _place_labels(fig: Figure, layout: Mapping[Any, _Labels]) -> None:
    """Put each label beside its point where it covers no marker, arrow or other label and stays in the Axes.

    Tries right/left (the preferred side first), below, above and the diagonals;
    takes the first free place, else the least crowded. Runs after the layout is
    final (one draw), so display coordinates are those of the saved file.
    """
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    px = fig.dpi / 72.0
    for ax, labels in layout.items():
        to_px = ax.transData.transform
        obstacles = []
        for xy, radius in labels.markers:
            cx, cy = to_px(xy)
            obstacles.append(Bbox.from_extents(cx - radius * px, cy - radius * px, cx + radius * px, cy + radius * px))
        paths = [MplPath(to_px([a, b])) for a, b in labels.segments]
        frame = ax.get_window_extent(renderer)
        placed: list[Bbox] = []
        for text, radius, side in labels.texts:
            d = radius + 2.0
            places = [(side * d, 0, "left" if side > 0 else "right", "center"),
                      (-side * d, 0, "right" if side > 0 else "left", "center"),
                      (0, -d, "center", "top"), (0, d, "center", "bottom"),
                      (d * 0.75, -d * 0.75, "left", "top"), (-d * 0.75, -d * 0.75, "right", "top"),
                      (d * 0.75, d * 0.75, "left", "bottom"), (-d * 0.75, d * 0.75, "right", "bottom")]
            best = None
            for dx, dy, ha, va in places:
                text.xyann = (dx, dy)
                text.set_horizontalalignment(ha)
                text.set_verticalalignment(va)
                box = text.get_window_extent(renderer).padded(1.0)
                inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
                hits = (sum(box.overlaps(o) for o in obstacles + placed)
                        + sum(p.intersects_bbox(box, filled=False) for p in paths) + (0 if inside else 100))
                if best is None or hits < best[0]:
                    best = (hits, dx, dy, ha, va)
                if hits == 0:
                    break
            _, dx, dy, ha, va = best
            text.xyann = (dx, dy)
            text.set_horizontalalignment(ha)
            text.set_verticalalignment(va)
            placed.append(text.get_window_extent(renderer))


# --------------------------------------------------------------------------
# 1. latency vs params
# --------------------------------------------------------------------------

def latency_vs_params(records: Sequence[Mapping[str, Any]], out_dir: Path | str,
                      stem: str = "latency_vs_params") -> FigureResult:
    """Median latency (ms) vs params (M) per device/runtime panel; bubble area ∝ GMACs; arrows original → pruned."""
    df = plot_frame(records)
    df = df[df["params"].notna()].reset_index(drop=True) if not df.empty else df
    if df.empty:
        return FigureResult("latency_vs_params", skipped="no ok record with a parameter count")
    df["params_m"] = df["params"] / 1e6
    df["gmacs"] = df["macs"].fillna(0) / 1e9
    with matplotlib.rc_context(STYLE):
        fig = _bubble_figure(df, "params_m", "median_ms", "gmacs", "params (M)", "latency (ms)", "GMACs", log_y=True,
                             side=1)
        paths = _save(fig, Path(out_dir), stem)
    data = df[["panel_label", "device", "runtime", "format", "batch_size", "model", "variant", "label",
               "params_m", "median_ms", "gmacs"]]
    return FigureResult("latency_vs_params", paths, data, fig)


# --------------------------------------------------------------------------
# 2. accuracy vs latency
# --------------------------------------------------------------------------

def accuracy_vs_latency(records: Sequence[Mapping[str, Any]], out_dir: Path | str,
                        stem: str = "accuracy_vs_latency") -> FigureResult:
    """Top-1 (%) vs median latency (ms) per panel, bubble area ∝ params; nothing written without Top-1 values."""
    df = plot_frame(records)
    df = df[df["top1"].notna()].reset_index(drop=True) if not df.empty else df
    if df.empty:
        return FigureResult("accuracy_vs_latency",
                            skipped="no Top-1 values (set top1 in the bench.toml [models.*] entries)")
    df["params_m"] = df["params"].fillna(0) / 1e6
    with matplotlib.rc_context(STYLE):
        fig = _bubble_figure(df, "median_ms", "top1", "params_m", "latency (ms)", "top-1 accuracy (%)", "params",
                             log_y=False, side=-1)
        paths = _save(fig, Path(out_dir), stem)
    data = df[["panel_label", "device", "runtime", "format", "batch_size", "model", "variant", "label",
               "median_ms", "top1", "params_m"]]
    return FigureResult("accuracy_vs_latency", paths, data, fig)


# --------------------------------------------------------------------------
# 3. speedup bars
# --------------------------------------------------------------------------

def _pairs(records: Sequence[Mapping[str, Any]], df: pd.DataFrame) -> pd.DataFrame:
    """speedup_frame's pairs (the tables' pairing), with the plot frame's labels and colours."""
    pairs = speedup_frame(list(records), with_intervals=True)
    if pairs.empty:
        return pairs
    info = df[["record_index", "panel_label", "panel_rank", "label", "color", "hatch", "model_rank",
               "variant_rank"]]
    pairs = pairs.drop(columns=[c for c in info.columns if c != "record_index" and c in pairs])  # the record's label
    return pairs.merge(info, on="record_index").sort_values(
        ["panel_rank", "model_rank", "variant_rank"], kind="stable").reset_index(drop=True)


def speedup_bars(records: Sequence[Mapping[str, Any]], out_dir: Path | str, stem: str = "speedup") -> FigureResult:
    """Speedup (original ms ÷ pruned ms) per device/runtime group, one bar per pruned variant, MACs ratio marked."""
    df = plot_frame(records)
    pairs = _pairs(records, df) if not df.empty else pd.DataFrame()
    if pairs.empty:
        return FigureResult("speedup", skipped="no pruned record with an ok original to compare with")
    variants = pairs.drop_duplicates(["model", "variant"]).sort_values(["model_rank", "variant_rank"])
    groups = list(dict.fromkeys(pairs["panel_rank"]))
    most = int(pairs.groupby("panel_rank").size().max())
    bar_w = 0.8 / most  # a group's bars side by side, centred on the group, in the same order in every group
    # one column holds two groups' labels ("Raspberry Pi 4B / onnxruntime (.onnx)" is ~1.1 in at 7 pt)
    width = SINGLE_COLUMN_IN if len(groups) <= 2 and len(pairs) <= 12 else DOUBLE_COLUMN_IN
    columns: dict[int, list] = {}
    for c, h, lab, rank in zip(variants["color"], variants["hatch"], variants["label"], variants["model_rank"]):
        columns.setdefault(rank, []).append(Patch(facecolor=c, edgecolor="black", linewidth=0.5, hatch=h, label=lab))
    keys = [Line2D([], [], ls="none", marker="D", markersize=3.5, markerfacecolor="white", markeredgecolor="black",
                   markeredgewidth=0.7, label="MACs ratio"),
            Line2D([], [], color="0.3", ls="--", lw=0.8, label="1.0× (no speedup)")]
    if pairs["speedup_low"].notna().any():
        keys.append(Line2D([], [], color="black", lw=0.7, marker="_", markersize=3.5,
                           label=f"{intervals.DEFAULT_CONFIDENCE * 100:g} % interval"))
    handles = [h for col in columns.values() for h in col] + keys
    rows = []
    with matplotlib.rc_context(STYLE):
        legend = _plan_legend(width, handles, [*columns.values(), keys])
        fig = _figure(width, 2.2 + legend.height)
        ax = fig.subplots()
        ax.axhline(1.0, color="0.3", ls="--", lw=0.8, zorder=1)
        for g, group in enumerate(groups):
            bars = pairs[pairs["panel_rank"] == group]
            for k, (_, p) in enumerate(bars.iterrows()):
                x = g + bar_w * (k - (len(bars) - 1) / 2)
                ax.bar([x], [p["speedup"]], width=bar_w * 0.92, color=p["color"], edgecolor="black", linewidth=0.5,
                       hatch=p["hatch"], zorder=2, gid=f"{p['model']}|{p['variant']}")
                if not (pd.isna(p["speedup_low"]) or pd.isna(p["speedup_high"])):
                    ax.errorbar([x], [p["speedup"]], yerr=[[p["speedup"] - p["speedup_low"]],
                                                           [p["speedup_high"] - p["speedup"]]],
                                fmt="none", ecolor="black", elinewidth=0.7, capsize=1.5, capthick=0.7, zorder=3,
                                gid=f"interval|{p['model']}|{p['variant']}")
                rows.append({"group": p["panel_label"], "device": p["device"], "runtime": p["runtime"],
                             "format": p["format"], "batch_size": p["batch_size"], "model": p["model"],
                             "variant": p["variant"], "label": p["label"], "x": x, "speedup": p["speedup"],
                             "speedup_low": p["speedup_low"], "speedup_high": p["speedup_high"],
                             "validity": p["validity"],
                             "macs_ratio": p["macs_ratio"], "efficiency": p["efficiency"],
                             "median_ms": p["median_ms"], "median_ms_original": p["median_ms_original"]})
        data = pd.DataFrame(rows)
        marks = data.dropna(subset=["macs_ratio"])
        ax.scatter(marks["x"], marks["macs_ratio"], marker="D", s=9, facecolors="white", edgecolors="black",
                   linewidths=0.7, zorder=4, gid="macs_ratio")
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([pairs.loc[pairs["panel_rank"] == g, "panel_label"].iloc[0].replace(" · ", "\n")
                            for g in groups])
        ax.tick_params(axis="x", length=0)
        ax.grid(axis="x", visible=False)
        ax.set_xlim(-0.5, len(groups) - 0.5)
        top = max(data["speedup"].max(), data["speedup_high"].max(skipna=True) if data["speedup_high"].notna().any()
                  else 0.0, marks["macs_ratio"].max() if len(marks) else 0.0, 1.0)
        ax.set_ylim(0, top * 1.08)
        ax.set_ylabel("speedup over original (×)")
        legend.draw(fig)
        _unclash_ticklabels(fig, ax)
        paths = _save(fig, Path(out_dir), stem)
    return FigureResult("speedup", paths, data, fig)


def _unclash_ticklabels(fig: Figure, ax: Any) -> None:
    """Slant the x tick labels when, after layout, neighbours overlap (many groups in one figure)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
    if any(a.x1 > b.x0 - 2 for a, b in zip(boxes, boxes[1:])):
        fig.set_figheight(fig.get_figheight() + 0.5)  # room for the slanted labels (1/8 in steps: exact pixels)
        for label in ax.get_xticklabels():
            label.set_rotation(30)
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")


# --------------------------------------------------------------------------
# 4. latency distribution
# --------------------------------------------------------------------------

_KDE_POINTS = 4000  # a violin of more samples is drawn from this many evenly spaced quantiles (same shape)


def _violin_data(ms: np.ndarray) -> np.ndarray:
    """The samples a violin shows: p0.5–p99.5 (a rare 10× outlier would flatten it), at most _KDE_POINTS."""
    lo, hi = np.percentile(ms, [0.5, 99.5])
    kept = ms[(ms >= lo) & (ms <= hi)]
    if len(kept) > _KDE_POINTS:
        kept = np.quantile(kept, np.linspace(0, 1, _KDE_POINTS))
    return kept if len(kept) > 1 and np.ptp(kept) > 0 else np.repeat(ms[:1], 2)


def latency_distribution(records: Sequence[Mapping[str, Any]], out_dir: Path | str,
                         stem: str = "latency_distribution") -> FigureResult:
    """Every timed iteration as a violin, median, IQR and p1–p99 marked, in ms.

    One row of small panels per device/runtime, one panel per model and variant
    (the same column in every row), each with its own latency axis: models differ
    by 10× or more, their spread by a few percent, so a shared axis would show
    flat lines.
    """
    df = plot_frame(records)
    df = df[df["samples_ns"].map(len) > 0].reset_index(drop=True) if not df.empty else df
    if df.empty:
        return FigureResult("latency_distribution", skipped="no ok record with raw samples")
    panels = _panels(df)
    cells = df.drop_duplicates(["model", "variant"]).sort_values(["model_rank", "variant_rank"], kind="stable")
    column = {(m, v): i for i, (m, v) in enumerate(zip(cells["model"], cells["variant"]))}
    ncols = len(column)
    width = SINGLE_COLUMN_IN if ncols <= 3 else DOUBLE_COLUMN_IN
    handles = [Line2D([], [], ls="none", marker="o", markersize=3.5, markerfacecolor="white", markeredgecolor="black",
                      markeredgewidth=0.6, label="median"),
               Line2D([], [], color="black", lw=2.2, label="IQR"),
               Line2D([], [], color="black", lw=0.7, label="p1–p99"),
               Patch(facecolor="0.75", edgecolor="black", linewidth=0.4, label="density (p0.5–p99.5)")]
    rows = []
    with matplotlib.rc_context(STYLE):
        legend = _plan_legend(width, handles)
        fig = _figure(width, 1.45 * len(panels) + legend.height)
        subfigs = fig.subfigures(len(panels), 1, squeeze=False).ravel()
        for sub, panel in zip(subfigs, panels):
            sub.suptitle(panel["panel_label"].iloc[0].replace("\n", ", "), fontsize=STYLE["axes.titlesize"])
            axes = sub.subplots(1, ncols, squeeze=False).ravel()
            used = set()
            for _, row in panel.iterrows():
                col = column[(row["model"], row["variant"])]
                used.add(col)
                ax = axes[col]
                ms = np.asarray(row["samples_ns"], dtype=float) / 1e6
                p1, q1, q3, p99 = np.percentile(ms, [1, 25, 75, 99])
                parts = ax.violinplot([_violin_data(ms)], positions=[0], widths=0.8, showextrema=False)
                body = parts["bodies"][0]
                body.set_facecolor(row["color"])
                body.set_edgecolor("black")
                body.set_linewidth(0.4)
                body.set_alpha(0.85 if row["variant"] == "original" else 0.6)
                body.set_hatch(row["hatch"] if row["variant"] != "original" else "")
                ax.vlines([0], [p1], [p99], color="black", lw=0.7, zorder=3)
                ax.vlines([0], [q1], [q3], color="black", lw=2.2, zorder=3)
                ax.scatter([0], [row["median_ms"]], marker="o", s=9, facecolors="white", edgecolors="black",
                           linewidths=0.6, zorder=4, gid=f"{row['model']}|{row['variant']}")
                ax.set_xlim(-0.6, 0.6)
                ax.set_xticks([0])
                name = model_label(row["model"])
                rest = row["label"][len(name):].strip()
                ax.set_xticklabels([f"{name}\n{rest}" if rest else name])
                ax.tick_params(axis="x", length=0)
                ax.grid(axis="x", visible=False)
                ax.yaxis.set_major_locator(ticker.MaxNLocator(nbins=4, min_n_ticks=3))
                ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
                ax.tick_params(axis="y", pad=1.5)
                rows.append({"panel_label": row["panel_label"], "device": row["device"], "runtime": row["runtime"],
                             "format": row["format"], "batch_size": row["batch_size"], "model": row["model"],
                             "variant": row["variant"], "label": row["label"], "column": col, "n": len(ms),
                             "median_ms": row["median_ms"], "p1_ms": p1, "q1_ms": q1, "q3_ms": q3, "p99_ms": p99})
            for col, ax in enumerate(axes):
                ax.set_visible(col in used)
            axes[min(used)].set_ylabel("latency (ms)")
        legend.draw(fig)
        paths = _save(fig, Path(out_dir), stem)
    return FigureResult("latency_distribution", paths, pd.DataFrame(rows), fig)


#: Every figure kind, in the order ``bench figures`` draws them.
FIGURES: dict[str, Callable[..., FigureResult]] = {
    "latency_vs_params": latency_vs_params,
    "accuracy_vs_latency": accuracy_vs_latency,
    "speedup": speedup_bars,
    "latency_distribution": latency_distribution,
}


def make_figures(records: Sequence[Mapping[str, Any]], out_dir: Path | str,
                 kinds: Sequence[str] | None = None) -> dict[str, FigureResult]:
    """Draw every kind (or ``kinds``) into ``out_dir``; a kind without data comes back with ``skipped`` set."""
    unknown = [k for k in kinds or () if k not in FIGURES]
    if unknown:
        raise ValueError(f"unknown figure kind {unknown[0]!r}; known: {', '.join(FIGURES)}")
    return {kind: FIGURES[kind](records, out_dir) for kind in (kinds or FIGURES)}

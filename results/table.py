"""The paper's benchmark table (docs/design.md §3) from stored records: ``python -m bench table``.

Layout
======

* **One table per batch size** (the paper's table is batch 1; a sweep over
  ``--batch 1,8`` gives two tables, smallest batch first).  Latencies of
  different batch sizes are not comparable side by side, and a batch column
  would double every model row.  CSV is the exception: it is one flat file
  with a ``batch_size`` column, so it loads as one frame.
* **Rows**: one row per ``bench.toml`` model entry, grouped by the model a
  pruned entry is compared with (its ``base_entry``; for older records
  without one, the original of the same timm model): the unpruned
  ``original`` first (labelled with its ``bench.toml`` ``label`` when given,
  else the timm name, plus the entry name when two originals would read the
  same), then each pruned variant as an indented ``+ SNP`` row (``+ L2``,
  ``+ random``, ... for the ablation criteria; ``+ <label>`` when the entry
  has a label), with the variant itself (e.g. ``snp:paper``) in the
  ``variant`` column.  Models and variants follow the run's model order
  (``bench.toml``), devices the run's device order.
* **Columns**: ``Top-1`` (only when some entry gives ``top1``), ``GMACs`` (of
  one image), ``Params (M)``, then one latency column per (device, runtime,
  format, runtime options), labelled ``<device label> (<format>)`` as in the
  paper, e.g. ``Raspberry Pi 4B (.onnx)``; TorchScript shows as ``.pt``.  When
  one device has two runtimes or option sets for one format, the runtime and
  then the options are added to the label.
* **Cells**: ``median ms · speedup× (low–high)``, e.g. ``81.6 · 1.70× (1.66–1.74)``,
  where the speedup is the base model's median ÷ this record's median on the
  same device, runtime, options, format, batch size and input shape
  (``results.speedup.pair_records``, the one pairing the figures and exports
  use too) and ``low–high`` its 95 % confidence interval
  (``results.intervals.speedup_interval``: a paired bootstrap over the
  interleaved rounds both were timed in; a block bootstrap of the samples for
  records without rounds).  ``plain`` (``--plain``) gives the paper's layout,
  ``median ms (speedup×)``, with the same markers.  The original's own cell
  has no speedup; a cell whose original failed or was not measured shows the
  median alone; a combination never measured shows ``–``.
* ``--efficiency`` adds a ``MACs ratio`` column and, after the latency
  columns, one ``eff. <column>`` column each: speedup ÷ MACs ratio (1.0 means
  every saved MAC became saved time).
* ``--cold`` adds, per latency column, the cold start and memory of each
  record (agent protocol 2: each model loaded once in a fresh process):
  ``load s`` (load time: session creation / engine deserialisation),
  ``1st inference ms``, ``peak RSS MiB``, ``GPU peak MiB`` (only where some
  runtime reported it) and, for batch sizes above 1, ``img/s`` (throughput,
  batch ÷ median seconds).  Records made before schema 4 leave them empty.

The whole table of a stored run, exactly as ``bench table`` prints it (and the
sweep's closing table), is :func:`render_run`.

Footnotes
=========

A cell is marked when its record should not be trusted blindly, one marker
per reason, and a footnote per reason lists every marked cell with the detail:

=====  ==============================================================================
``†``  throttling, clock or power-mode change: a ``*_now`` flag in the environment
       snapshot before or after the measurement (Raspberry Pi ``vcgencmd
       get_throttled``), a ``*_occurred`` flag that appeared during it, the agent's own
       throttling warning, or a power mode, clock limit or governor that differs
       between the snapshots (``results.intervals.environment_changes``); a pruned
       cell is marked too when its original's measurement saw it
``‡``  CV (std / mean of the samples) above the threshold (default 0.05)
``§``  fewer samples than asked, or less time than ``min_seconds`` (the agent's
       warnings say so; also when ``n`` is below the iterations asked); a pruned
       cell is marked too when its original is short
``◇``  the speedup's confidence interval is wider than ``max_width`` (default 10 %
       of the speedup), or there is none (fewer than 10 samples)
``♭``  the original's per-round medians drift (a monotone trend or a wide spread
       across the rounds; thresholds in ``results.intervals``), marked on its
       pruned cells
``↑``  the efficiency (speedup ÷ MACs ratio) is above 1.0: the pruned model got
       faster than its saved MACs explain (``results.speedup``: usually the
       device's state changed between the models, sometimes a cache effect); the
       mark is on the speedup and on its efficiency, whether or not the table
       shows efficiencies
``¶``  the onnxruntime execution provider fell back (``provider_fallback``)
``‖``  any other agent warning (only with ``all_warnings``: e.g. a cpufreq
       governor other than ``performance``, which most desktops report)
``*``  the job failed: the cell reads ``error``; the footnote gives stage and message
=====  ==============================================================================

LaTeX uses ``\\dag``, ``\\ddag``, ``\\S``, ``$\\diamond$``, ``$\\flat$``, ``$\\uparrow$``, ``\\P``,
``$\\|$`` and ``*`` as superscripts.

The ``◇``, ``♭``, ``↑`` reasons and the pair part of ``†`` and ``§`` are the speedup's
validity (``results.intervals.validity``); the thresholds are ``thresholds``
of :func:`build_tables`.

Renderers
=========

``md`` (``results.markdown.markdown_table``), ``latex`` (``DataFrame.to_latex``:
booktabs rules, every text escaped, inside a ``table`` float with caption and the notes
as a ``\\footnotesize`` block; needs ``\\usepackage{booktabs}``), ``html``
(``DataFrame.to_html``, escaped, notes in a ``<ul>``), ``csv`` (``to_csv``:
numbers, not formatted text: per latency column ``… median_ms``, ``… speedup``,
``… speedup_low``, ``… speedup_high``, ``… efficiency`` with ``--efficiency``,
the cold-start fields with ``--cold``, and ``… notes`` with the reasons as
text).
"""

from __future__ import annotations

import html as html_lib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import pandas as pd

from formats import display_format, format_order
from results.intervals import (
    DEFAULT_CONFIDENCE,
    DEFAULT_MAX_WIDTH,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    environment_changes,
    first_line,
    is_environment_warning,
    is_sample_warning,
    sample_shortfall,
)
from results.markdown import markdown_table
from results.records import options_key
from results.speedup import options_text, speedup_frame
from results.store import Store, UnknownRunError

DEFAULT_CV_THRESHOLD = 0.05
#: Record columns of the ``cold`` option: cold start, memory, throughput (``results.records``).
COLD_FIELDS = ("load_s", "first_inference_ms", "peak_rss_mb", "gpu_peak_mb", "throughput_ips")
RENDERERS = ("md", "latex", "csv", "html")
_CRITERION_NAMES = {"snp": "SNP", "l2": "L2"}
MISSING = "–"


@dataclass(frozen=True)
class Reason:
    key: str
    symbol: str   # markdown / html / csv
    latex: str    # inside \textsuperscript{...}
    title: str    # footnote heading; {cv} is the CV threshold


REASONS: tuple[Reason, ...] = (
    Reason("throttling", "†", r"\dag", "throttling, clock or power-mode change during the measurement"),
    Reason("cv", "‡", r"\ddag", "high variation: CV above {cv:g}"),
    Reason("samples", "§", r"\S", "fewer samples than asked"),
    Reason("wide", "◇", r"$\diamond$", "speedup interval wider than {width:g} % of the speedup"),
    Reason("drift", "♭", r"$\flat$", "the original's latency drifted across the rounds"),
    Reason("superlinear", "↑", r"$\uparrow$", "speedup above the MACs ratio (efficiency above 1.0)"),
    Reason("fallback", "¶", r"\P", "execution provider fell back"),
    Reason("warning", "‖", r"$\|$", "other warnings of the device agent"),
    Reason("error", "*", "*", "the job failed"),
)
REASON_BY_KEY = {r.key: r for r in REASONS}


class TableError(ValueError):
    """Nothing to tabulate (no records, no batch size left, ...): one line for the user."""


# --------------------------------------------------------------------------
# Why a record is marked
# --------------------------------------------------------------------------

def _after(prefix: str, warning: str) -> str:
    """The warning without its category prefix (the footnote's title says it already)."""
    rest = warning[len(prefix):].lstrip(" :") if warning.startswith(prefix) else warning
    return first_line(rest or warning)


def record_reasons(record: Mapping[str, Any], cv_threshold: float = DEFAULT_CV_THRESHOLD,
                   all_warnings: bool = False) -> list[tuple[str, str]]:
    """``(reason key, detail)`` for each reason the record's cell is marked, in :data:`REASONS` order."""
    if record.get("status") != "ok":
        stage = record.get("error_stage") or "unknown"
        return [("error", f"{stage}: {first_line(record.get('error_message'))}")]
    warnings = [str(w) for w in record.get("warnings") or []]
    used: set[str] = set()
    found: dict[str, str] = {}

    def claim(*prefixes: str) -> list[str]:
        hits = [w for w in warnings if w.startswith(prefixes)]
        used.update(hits)
        return hits

    used.update(w for w in warnings if is_environment_warning(w))
    changes = environment_changes(record)
    if changes:
        found["throttling"] = "; ".join(changes)
    cv = record.get("cv")
    claim("high variation")  # the agent's own cv warning (its threshold); ours decides
    if cv is not None and not math.isnan(cv) and cv > cv_threshold:
        found["cv"] = f"cv={cv:.3f}"
    used.update(w for w in warnings if is_sample_warning(w))
    short = sample_shortfall(record)
    if short:
        found["samples"] = short
    said = claim("provider fallback")
    if record.get("provider_fallback") or said:
        found["fallback"] = _after("provider fallback", said[0]) if said else f"providers {record.get('providers')}"
    if all_warnings:
        rest = [w for w in warnings if w not in used]
        if rest:
            found["warning"] = "; ".join(first_line(w) for w in rest)
    return [(r.key, found[r.key]) for r in REASONS if r.key in found]


#: What a speedup's validity reason (``results.intervals.validity``) marks: the same marker as the record reason.
VALIDITY_MARKS = {"wide": "wide", "drift": "drift", "environment": "throttling", "samples": "samples",
                  "superlinear": "superlinear"}


def _cell_reasons(cell: Mapping[str, Any], cv_threshold: float, all_warnings: bool) -> list[tuple[str, str]]:
    """The record's reasons, plus its speedup's validity reasons not already marked, in :data:`REASONS` order."""
    found = dict(record_reasons(cell, cv_threshold, all_warnings))
    for key, detail in cell.get("validity_details") or []:
        found.setdefault(VALIDITY_MARKS[key], detail)
    return [(r.key, found[r.key]) for r in REASONS if r.key in found]


# --------------------------------------------------------------------------
# The table data
# --------------------------------------------------------------------------

@dataclass
class Note:
    reason: str
    cell: str     # "deit_tiny_patch16_224 snp:paper, Raspberry Pi 4B (.onnx)"
    detail: str


@dataclass
class SpeedupTable:
    """One batch size of one run: rows (models), latency columns, long-form cells and footnotes."""

    run_id: str
    batch_size: int
    rows: pd.DataFrame        # one row per (model, variant), in table order; index = row id
    columns: list[str]        # latency column labels, in order
    cells: pd.DataFrame       # one row per record: row, column, median_ms, speedup, efficiency, status, reasons
    notes: list[Note] = field(default_factory=list)
    cv_threshold: float = DEFAULT_CV_THRESHOLD
    efficiency: bool = False
    plain: bool = False       # cells without the interval (the paper's layout)
    cold: bool = False        # cold start, memory and throughput columns
    max_width: float = DEFAULT_MAX_WIDTH
    confidence: float = DEFAULT_CONFIDENCE

    @property
    def has_top1(self) -> bool:
        return bool(self.rows["top1"].notna().any())

    def note_lines(self) -> list[tuple[Reason, str, str]]:
        """``(reason, title, body)`` per reason that marks some cell, in :data:`REASONS` order."""
        out = []
        for reason in REASONS:
            hits = [n for n in self.notes if n.reason == reason.key]
            if hits:
                body = "; ".join(f"{n.cell}: {n.detail}" for n in hits)
                out.append((reason, reason.title.format(cv=self.cv_threshold, width=self.max_width * 100), body))
        return out

    def caption(self) -> str:
        return f"{self.description()}, batch size {self.batch_size}, run {self.run_id}."

    def description(self) -> str:
        """What a cell holds, in words (the caption and the markdown heading)."""
        speedup = "speedup over the unpruned original on the same device, runtime and batch size"
        if not self.plain:
            speedup += f", {self.confidence * 100:g} % confidence interval in parentheses"
        return f"Median latency in ms ({speedup})"


def _pruned_name(variant: str) -> str:
    criterion = variant.split(":", 1)[0]
    return _CRITERION_NAMES.get(criterion, criterion)


def _column_labels(keys: pd.DataFrame) -> dict[tuple, str]:
    """Label each (device, runtime, format, options) column; disambiguate labels that would repeat."""
    keys = keys.assign(base=keys["device_label"] + " (" + keys["format"].map(display_format))
    labels = {}
    for _, same in keys.groupby("base", sort=False):
        for row in same.itertuples(index=False):
            extra = []
            if len(same) > 1:
                if same["device"].nunique() > 1:
                    extra.append(row.device)
                if same["runtime"].nunique() > 1:
                    extra.append(row.runtime)
                if same["options"].nunique() > 1:
                    extra.append(options_key(json.loads(row.options)))
            labels[(row.device, row.runtime, row.format, row.options)] = \
                row.base + "".join(", " + e for e in extra) + ")"
    return labels


def _order(values: Iterable[str], preferred: Sequence[str] | None) -> dict[str, int]:
    """Position of each value: its place in ``preferred`` first, then first appearance."""
    order = {v: i for i, v in enumerate(preferred or [])}
    for v in values:
        order.setdefault(v, len(order))
    return order


def build_tables(records: Sequence[Mapping[str, Any]], run_id: str = "", *,
                 cv_threshold: float = DEFAULT_CV_THRESHOLD, efficiency: bool = False, all_warnings: bool = False,
                 labels: Mapping[str, str] | None = None, model_order: Sequence[str] | None = None,
                 device_order: Sequence[str] | None = None, batches: Sequence[int] | None = None,
                 plain: bool = False, cold: bool = False, confidence: float = DEFAULT_CONFIDENCE,
                 resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                 thresholds: Mapping[str, float] | None = None) -> list[SpeedupTable]:
    """One :class:`SpeedupTable` per batch size of ``records`` (one run's records, ok and error).

    ``labels`` maps ``bench.toml`` model entry names to display labels;
    ``model_order`` (entry names) and ``device_order`` (device names) give the
    row and column order (the run's config lists them); ``batches`` keeps only
    those batch sizes.  Speedup intervals and validity come from
    ``results.intervals`` (``confidence``, ``resamples``, ``seed``, and
    ``thresholds``: keyword arguments of ``results.intervals.validity_details``)
    and need the records' samples; records read without them get the plain
    speedup.  ``plain`` leaves the intervals out of the cells, ``cold`` adds the
    cold-start, memory and throughput columns.
    """
    if not records:
        raise TableError(f"run {run_id or '?'} has no records")
    labels = dict(labels or {})
    wanted = set(batches or ())
    kept = [dict(r) for r in records if not wanted or r["batch_size"] in wanted]
    if not kept:
        raise TableError(f"run {run_id or '?'} has no records for batch size(s) {', '.join(map(str, batches))}")
    df = pd.DataFrame(kept)
    # speedups: the one pairing rule (results.speedup), joined back by position
    pairs = speedup_frame(kept, with_intervals=True, confidence=confidence, resamples=resamples, seed=seed,
                          thresholds=thresholds)
    for col in ("speedup", "speedup_low", "speedup_high", "macs_ratio", "efficiency"):
        df[col] = pd.Series(dtype=float) if pairs.empty else pd.Series(
            pairs[col].to_numpy(), index=pairs["record_index"].to_numpy(), dtype=float)
    validity = {} if pairs.empty else dict(zip(pairs["record_index"], pairs["validity_details"]))
    df["validity_details"] = [validity.get(i, []) for i in range(len(kept))]
    for col in COLD_FIELDS:
        df[col] = pd.to_numeric(pd.Series([r.get(col) for r in kept], dtype=object), errors="coerce")
    df["group"] = _groups(kept)
    df["entry"] = [r.get("entry") or r["model"] for r in kept]
    df["device_label"] = [r.get("device_label") or r["device"] for r in kept]
    df["top1"] = [r.get("top1") for r in kept]
    df["label"] = [labels.get(e) or r.get("label") or "" for e, r in zip(df["entry"], kept)]
    df["options"] = [options_text(r.get("runtime_options")) for r in kept]

    entry_pos = _order(df["entry"], model_order)
    device_pos = _order(df["device"], device_order)
    tables = []
    for batch, part in df.groupby("batch_size", sort=True):
        table = _one_table(part.copy(), run_id, int(batch), cv_threshold, efficiency, all_warnings,
                           entry_pos, device_pos)
        table.plain, table.cold, table.confidence = plain, cold, confidence
        table.max_width = float(dict(thresholds or {}).get("max_width", DEFAULT_MAX_WIDTH))
        tables.append(table)
    return tables


def _groups(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The row group of each record: an original's own entry; a pruned record's ``base_entry`` or, for records
    without one, the entry of an original of the same timm model (its timm name when the run has none)."""
    original_entry: dict[str, str] = {}
    for r in records:
        if r["variant"] == "original":
            original_entry.setdefault(r["model"], r.get("entry") or r["model"])
    return [(r.get("entry") or r["model"]) if r["variant"] == "original"
            else r.get("base_entry") or original_entry.get(r["model"], r["model"]) for r in records]


def _one_table(df: pd.DataFrame, run_id: str, batch: int, cv_threshold: float, efficiency: bool,
               all_warnings: bool, entry_pos: dict[str, int], device_pos: dict[str, int]) -> SpeedupTable:
    # rows: one per entry, in groups (an original and what is compared with it, ordered by their first
    # entry), original first, then pruned variants
    df["is_original"] = df["variant"] == "original"
    df["entry_pos"] = df["entry"].map(entry_pos)
    df["group_pos"] = df["group"].map(df.groupby("group")["entry_pos"].min())
    row_keys = (df.groupby(["model", "variant", "entry"], sort=False)
                .agg(group=("group", "first"), group_pos=("group_pos", "first"), is_original=("is_original", "first"),
                     entry_pos=("entry_pos", "min"), label=("label", "first"),
                     top1=("top1", "first"), macs=("macs", "first"), params=("params", "first"))
                .reset_index()
                .sort_values(["group_pos", "group", "is_original", "entry_pos", "variant"],
                             ascending=[True, True, False, True, True])
                .reset_index(drop=True))
    row_keys["row"] = range(len(row_keys))
    originals = row_keys[row_keys["is_original"]].drop_duplicates("group").set_index("group")
    original_macs, original_name = originals["macs"], originals["label"].where(originals["label"] != "",
                                                                               originals["model"])
    same_name = original_name.duplicated(keep=False)
    original_name = original_name.where(~same_name, original_name + " (" + originals["entry"] + ")")

    def display(r: pd.Series) -> str:
        if r["is_original"]:
            return original_name.get(r["group"], r["label"] or r["model"])
        name = r["label"] or _pruned_name(r["variant"])
        name = name if name.startswith("+") else "+ " + name
        return name if r["group"] in original_name.index else f"{r['model']} {name}"

    row_keys["display"] = row_keys.apply(display, axis=1)
    row_keys["gmacs"] = row_keys["macs"].map(lambda m: None if pd.isna(m) else m / 1e9)
    row_keys["params_m"] = row_keys["params"].map(lambda p: None if pd.isna(p) else p / 1e6)
    row_keys["macs_ratio"] = [
        None if orig or g not in original_macs.index or pd.isna(mac) or not mac or pd.isna(original_macs[g])
        else original_macs[g] / mac
        for orig, g, mac in zip(row_keys["is_original"], row_keys["group"], row_keys["macs"])]
    row_keys["top1"] = row_keys["top1"].astype(object).where(row_keys["top1"].notna(), None)
    row_keys["who"] = [original_name.get(g, m) if orig else f"{original_name.get(g, m)} {v}"
                       for orig, g, m, v in zip(row_keys["is_original"], row_keys["group"], row_keys["model"],
                                                row_keys["variant"])]

    # columns: (device, runtime, format, options) in device order, then format, runtime, options
    keys = (df[["device", "device_label", "runtime", "format", "options"]].drop_duplicates()
            .assign(dpos=lambda k: k["device"].map(device_pos),
                    fpos=lambda k: k["format"].map(format_order))
            .sort_values(["dpos", "fpos", "format", "runtime", "options"]).reset_index(drop=True))
    labels = _column_labels(keys)
    columns = [labels[(k.device, k.runtime, k.format, k.options)] for k in keys.itertuples(index=False)]

    df = df.merge(row_keys[["model", "variant", "entry", "row", "who"]], on=["model", "variant", "entry"])
    df["column"] = [labels[(d, r, f, o)] for d, r, f, o in
                    zip(df["device"], df["runtime"], df["format"], df["options"])]
    df = df.sort_values("id" if "id" in df else "job_key").drop_duplicates(["row", "column"], keep="last")
    reasons = [_cell_reasons(r, cv_threshold, all_warnings) for r in df.to_dict("records")]
    df["reasons"] = [[k for k, _ in rs] for rs in reasons]
    df["details"] = ["; ".join(f"{k}: {d}" for k, d in rs) for rs in reasons]
    notes = [Note(key, f"{who}, {col}", detail)
             for who, col, rs in sorted(zip(df["who"], df["column"], reasons),
                                        key=lambda t: (columns.index(t[1]), t[0]))
             for key, detail in rs]
    notes.sort(key=lambda n: [r.key for r in REASONS].index(n.reason))
    cells = df[["row", "column", "median_ms", "speedup", "speedup_low", "speedup_high", "efficiency", *COLD_FIELDS,
                "status", "reasons", "details"]].reset_index(drop=True)
    for col in ("speedup", "speedup_low", "speedup_high", "efficiency", "median_ms", *COLD_FIELDS):
        cells[col] = pd.to_numeric(cells[col], errors="coerce")
    return SpeedupTable(run_id=run_id, batch_size=batch, rows=row_keys.set_index("row"), columns=columns,
                        cells=cells, notes=notes, cv_threshold=cv_threshold, efficiency=efficiency)


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------

def fmt_ms(value: float) -> str:
    """Milliseconds with 3-4 significant digits: 1377.7, 81.6, 4.21, 0.317."""
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


@dataclass(frozen=True)
class _Style:
    times: str
    indent: str
    missing: str
    marker: Callable[[Reason], str]
    sep: str = "·"
    dash: str = "–"


_PLAIN = _Style(times="×", indent="", missing=MISSING, marker=lambda r: r.symbol)
_HTML = _Style(times="×", indent="\u00a0\u00a0", missing=MISSING, marker=lambda r: r.symbol)
# LaTeX: tokens that survive escaping, replaced by markup after to_latex (see _LATEX_TOKENS)
_LATEX = _Style(times="@@times@@", indent="@@indent@@", missing="@@missing@@", marker=lambda r: f"@@mark-{r.key}@@",
                sep="@@sep@@", dash="@@dash@@")
_LATEX_TOKENS = {"@@times@@": r"$\times$", "@@indent@@": r"\quad{}", "@@missing@@": "--", "@@sep@@": r"$\cdot$",
                 "@@dash@@": "--", **{f"@@mark-{r.key}@@": rf"\textsuperscript{{{r.latex}}}" for r in REASONS}}


def _cell_text(cell: Mapping[str, Any], style: _Style, plain: bool = False) -> str:
    """``81.6 · 1.70× (1.66–1.74)`` (plain: ``81.6 (1.70×)``), the original's ``139.1``, or ``error``; markers."""
    marks = "".join(style.marker(REASON_BY_KEY[k]) for k in cell["reasons"])
    if cell["status"] != "ok":
        return "error" + marks
    text = fmt_ms(cell["median_ms"])
    if pd.isna(cell["speedup"]):
        return text + marks
    if plain:
        return f"{text} ({cell['speedup']:.2f}{style.times}){marks}"
    text += f" {style.sep} {cell['speedup']:.2f}{style.times}"
    if not (pd.isna(cell["speedup_low"]) or pd.isna(cell["speedup_high"])):
        text += f" ({cell['speedup_low']:.2f}{style.dash}{cell['speedup_high']:.2f})"
    return text + marks


def _fmt_number(value: float) -> str:
    """Three significant digits, no exponent below a million: 0.412, 12.5, 212, 1530."""
    return "" if value is None or pd.isna(value) else (fmt_ms(value) if value < 100 else f"{value:.0f}")


#: (record field, column heading prefix) of the ``cold`` columns; GPU memory only where some record has it,
#: throughput only for batch sizes above 1 (at batch 1 it is 1000 / the median).
_COLD_COLUMNS = (("load_s", "load s"), ("first_inference_ms", "1st inference ms"), ("peak_rss_mb", "peak RSS MiB"),
                 ("gpu_peak_mb", "GPU peak MiB"), ("throughput_ips", "img/s"))


def _cold_columns(table: SpeedupTable) -> list[tuple[str, str]]:
    cells = table.cells
    return [(f, h) for f, h in _COLD_COLUMNS
            if not (f == "gpu_peak_mb" and not cells[f].notna().any())
            and not (f == "throughput_ips" and table.batch_size == 1)]


def display_frame(table: SpeedupTable, style: _Style = _PLAIN) -> pd.DataFrame:
    """The table as text cells, one column per header: model, variant, [Top-1], GMACs, Params (M), latencies, ..."""
    cells = table.cells.assign(text=[_cell_text(c, style, table.plain) for c in table.cells.to_dict("records")])
    latency = cells.pivot(index="row", columns="column", values="text").reindex(
        index=table.rows.index, columns=table.columns)
    rows = table.rows
    out = pd.DataFrame(index=rows.index)
    out["model"] = [d if orig else style.indent + d for d, orig in zip(rows["display"], rows["is_original"])]
    out["variant"] = rows["variant"]
    if table.has_top1:
        out["Top-1"] = rows["top1"].map(lambda v: "" if v is None or pd.isna(v) else f"{v:.1f}")
    out["GMACs"] = rows["gmacs"].map(lambda v: "" if v is None or pd.isna(v) else f"{v:.3g}")
    out["Params (M)"] = rows["params_m"].map(lambda v: "" if v is None or pd.isna(v) else f"{v:.2f}")
    if table.efficiency:
        out["MACs ratio"] = rows["macs_ratio"].map(
            lambda v: "" if v is None or pd.isna(v) else f"{v:.2f}{style.times}")
    out = out.join(latency.fillna(style.missing))
    if table.efficiency:
        # an efficiency above 1.0 carries the same mark as its speedup (results.speedup: superlinear)
        mark = style.marker(REASON_BY_KEY["superlinear"])
        eff_text = [("" if pd.isna(v) else f"{v:.2f}" + (mark if "superlinear" in reasons else ""))
                    for v, reasons in zip(table.cells["efficiency"], table.cells["reasons"])]
        eff = table.cells.assign(eff_text=eff_text).pivot(index="row", columns="column", values="eff_text").reindex(
            index=table.rows.index, columns=table.columns)
        for col in table.columns:
            out[f"eff. {col}"] = eff[col].fillna("")
    if table.cold:
        for field_name, heading in _cold_columns(table):
            wide = table.cells.pivot(index="row", columns="column", values=field_name).reindex(
                index=table.rows.index, columns=table.columns)
            for col in table.columns:
                out[f"{heading} {col}"] = wide[col].map(_fmt_number)
    return out.reset_index(drop=True)


def numeric_frame(table: SpeedupTable) -> pd.DataFrame:
    """The table as numbers (CSV): one column per quantity, per latency column ``median_ms``, ``speedup``, ``notes``."""
    rows = table.rows
    out = pd.DataFrame({"batch_size": table.batch_size, "model": rows["model"], "variant": rows["variant"],
                        "entry": rows["entry"], "label": rows["display"], "top1": rows["top1"].astype(float),
                        "gmacs": rows["gmacs"].astype(float), "params_m": rows["params_m"].astype(float)},
                       index=rows.index)
    if table.efficiency:
        out["macs_ratio"] = rows["macs_ratio"].astype(float)
    cells = table.cells.assign(
        median=table.cells["median_ms"].where(table.cells["status"] == "ok"))
    quantities = [("median_ms", "median"), ("speedup", "speedup"), ("speedup_low", "speedup_low"),
                  ("speedup_high", "speedup_high")]
    if table.efficiency:
        quantities.append(("efficiency", "efficiency"))
    if table.cold:
        quantities += [(f, f) for f in COLD_FIELDS]
    quantities += [("status", "status"), ("notes", "details")]
    for name, source in quantities:
        wide = cells.pivot(index="row", columns="column", values=source).reindex(
            index=rows.index, columns=table.columns)
        for col in table.columns:
            out[f"{col} {name}"] = wide[col]
    ordered = ["batch_size", "model", "variant", "entry", "label", "top1", "gmacs", "params_m"] + \
              (["macs_ratio"] if table.efficiency else []) + \
              [f"{col} {name}" for col in table.columns for name, _ in quantities]
    return out[ordered].reset_index(drop=True)


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in running text (captions, footnotes)."""
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
            "†": r"\dag{}", "‡": r"\ddag{}", "§": r"\S{}", "¶": r"\P{}", "×": r"$\times$", "–": "--", "…": r"\dots{}",
            "◇": r"$\diamond$", "♭": r"$\flat$", "·": r"$\cdot$", "ρ": r"$\rho$"}
    return re.sub("|".join(re.escape(k) for k in repl), lambda m: repl[m.group(0)], text)


def _latex_tokens(text: str) -> str:
    return re.sub("|".join(re.escape(k) for k in _LATEX_TOKENS), lambda m: _LATEX_TOKENS[m.group(0)], text)


def _md_escape(symbol: str) -> str:
    """A footnote marker at the start of a list item: "- *" would start a nested list, so * is escaped."""
    return symbol.replace("*", "\\*")


def render_markdown(tables: Sequence[SpeedupTable]) -> str:
    parts = []
    for t in tables:
        frame = display_frame(t, _PLAIN)
        align = ["left", "left"] + ["right"] * (frame.shape[1] - 2)
        parts.append(f"**Batch size {t.batch_size}** (run {t.run_id}): {t.description()[0].lower()}"
                     f"{t.description()[1:]}")
        parts.append(markdown_table(list(frame.columns), frame.itertuples(index=False), align))
        notes = [f"- {_md_escape(r.symbol)} {title}: {body}" for r, title, body in t.note_lines()]
        if notes:
            parts.append("\n".join(notes))
    return "\n\n".join(parts) + "\n"


def render_latex(tables: Sequence[SpeedupTable]) -> str:
    parts = []
    for t in tables:
        frame = display_frame(t, _LATEX)
        column_format = "ll" + "r" * (frame.shape[1] - 2)
        tabular = _latex_tokens(frame.to_latex(index=False, escape=True, column_format=column_format))
        lines = [r"\begin{table}[htbp]", r"\centering", rf"\caption{{{latex_escape(t.caption())}}}",
                 rf"\label{{tab:speedup-bs{t.batch_size}}}", tabular.rstrip("\n")]
        notes = t.note_lines()
        if notes:
            lines.append(r"\par\smallskip")
            lines.append(r"{\footnotesize")
            lines += [rf"\textsuperscript{{{r.latex}}}~{latex_escape(title)}: {latex_escape(body)}\par"
                      for r, title, body in notes]
            lines.append("}")
        lines.append(r"\end{table}")
        parts.append("\n".join(lines))
    return "% needs \\usepackage{booktabs}\n" + "\n\n".join(parts) + "\n"


def render_html(tables: Sequence[SpeedupTable]) -> str:
    parts = []
    for t in tables:
        frame = display_frame(t, _HTML)
        parts.append(f"<h3>Batch size {t.batch_size} (run {html_lib.escape(t.run_id)})</h3>")
        parts.append(frame.to_html(index=False, escape=True, classes="speedup-table", border=0))
        notes = t.note_lines()
        if notes:
            items = "\n".join(f"<li>{html_lib.escape(r.symbol)} {html_lib.escape(title)}: {html_lib.escape(body)}</li>"
                              for r, title, body in notes)
            parts.append(f'<ul class="footnotes">\n{items}\n</ul>')
    return "\n".join(parts) + "\n"


def render_csv(tables: Sequence[SpeedupTable]) -> str:
    frames = [numeric_frame(t) for t in tables]
    return pd.concat(frames, ignore_index=True).to_csv(index=False)


def render(tables: Sequence[SpeedupTable], fmt: str = "md") -> str:
    """The tables as ``md``, ``latex``, ``csv`` or ``html`` text."""
    renderers = {"md": render_markdown, "latex": render_latex, "csv": render_csv, "html": render_html}
    if fmt not in renderers:
        raise TableError(f"unknown table format {fmt!r}; choose one of: {', '.join(RENDERERS)}")
    return renderers[fmt](tables)


def render_records(records: Sequence[Mapping[str, Any]], run_id: str = "", fmt: str = "md", *,
                   run_config: Mapping[str, Any] | None = None, labels: Mapping[str, str] | None = None,
                   **options: Any) -> str:
    """The tables of one run's records as ``fmt`` text; rows and columns in the order ``run_config`` lists.

    ``run_config`` is the run's ``config`` (``Store.get_run``): its ``models``
    and ``devices`` give the row and column order; ``options`` are those of
    :func:`build_tables`.  Raises :class:`TableError` when there is nothing
    to tabulate.
    """
    config = run_config or {}
    tables = build_tables(records, run_id, labels=labels, model_order=config.get("models"),
                          device_order=config.get("devices"), **options)
    return render(tables, fmt)


def render_run(store: Store, run_id: str, fmt: str = "md", *, labels: Mapping[str, str] | None = None,
               **options: Any) -> str:
    """The table of a stored run exactly as ``bench table`` prints it (the sweep's closing table calls this too).

    ``store`` is a :class:`results.store.Store`; every record of the run is
    read with its samples (the intervals need them); ``labels`` maps
    ``bench.toml`` entry names to display labels (records made since schema 3
    carry their own); ``options`` are those of :func:`build_tables` (``plain``,
    ``cold``, ``efficiency``, ``cv_threshold``, ``all_warnings``, ``batches``,
    ...).  An unknown run raises ``results.store.UnknownRunError``, a run
    without records :class:`TableError`.
    """
    info = store.get_run(run_id)
    if info is None:
        raise UnknownRunError(f"no run {run_id!r} in {store.path}")
    return render_records(store.records(run_id), run_id, fmt, run_config=info.get("config"), labels=labels,
                          **options)

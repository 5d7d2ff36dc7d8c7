"""Regression reports: markdown (summary first, then every job) and self-contained HTML with embedded figures.

Input is a :class:`results.regression.Comparison`.  :func:`write_reports`
writes ``report.md``, ``report.html`` and the figures (``regression.png``,
plus the run's figures from :mod:`results.figures` when that module is
available) into one folder; the HTML embeds every figure as a base64 PNG, so
the file alone is the whole report (a CI artifact, an e-mail attachment).
"""

from __future__ import annotations

import base64
import html
import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from results.markdown import markdown_table
from results.records import options_key
from results.regression import Comparison, Pair, StatusChange, job_label
from results.style import STYLE, new_figure, save_figure

log = logging.getLogger(__name__)

WORST = 10                 # regressions listed in the summary
MAX_FIGURE_JOBS = 60       # jobs in the forest plot (the largest |change| when there are more)
#: results.figures kinds drawn for the candidate run (when that module has them).
RUN_FIGURE_KINDS = ("speedup", "latency_distribution")
#: The report's own figures (a forest plot, a latency chart) are wider than a paper column and embedded as PNG;
#: they share results.style's rcParams.
FIGURE_WIDTH_IN = 9.0
FIGURE_DPI = 110
VERDICT_COLORS = {"regressed": "#c62828", "improved": "#2e7d32", "unchanged": "#616161", "inconclusive": "#ef6c00"}


# --------------------------------------------------------------------------
# Formatting helpers
# --------------------------------------------------------------------------

def pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x * 100:+.{digits}f} %"


def ci_text(p: Pair) -> str:
    if p.ci_low is None or p.ci_high is None:
        return "n/a"
    return f"[{pct(p.ci_low)}, {pct(p.ci_high)}]"


def verdict_text(p: Pair) -> str:
    return "inconclusive" if p.verdict == "unchanged" and not p.conclusive else p.verdict


def _run_line(run: Mapping[str, Any], fallback: str) -> str:
    if not run:
        return f"`{fallback}`"
    parts = [f"`{run.get('run_id', fallback)}`"]
    if run.get("git_rev"):
        parts.append(f"git {run['git_rev']}")
    if run.get("created"):
        parts.append(f"started {str(run['created'])[:19].replace('T', ' ')} UTC")
    if run.get("status") and run["status"] != "done":
        parts.append(f"status **{run['status']}** (not every job may have run)")
    return ", ".join(parts)


def method_text(cmp: Comparison) -> str:
    level = f"{cmp.confidence * 100:g} %"
    return (f"Change = candidate median / baseline median - 1, from the raw samples; {level} interval: "
            f"bootstrap of the ratio of medians ({cmp.resamples} resamples per run, seed {cmp.seed}) over each "
            f"record's interleaved rounds when both records have them, else circular blocks of samples (block "
            f"length per run from its autocorrelation). Regressed: the whole interval above "
            f"+{cmp.threshold * 100:g} %; improved: the whole interval below -{cmp.threshold * 100:g} %; "
            f"inconclusive: the interval straddles ±{cmp.threshold * 100:g} % (not a failure). "
            f"An ok -> error transition is a regression. See results/regression.py.")


def _counts_rows(cmp: Comparison) -> tuple[list[str], list[Any]]:
    c = cmp.counts()
    header = ["regressed", "ok -> error", "improved", "unchanged", "inconclusive", "error -> ok", "still failing",
              "only in baseline", "only in candidate", "artifact changed"]
    row = [c["regressed"], c["ok->error"], c["improved"], c["unchanged"] - c["inconclusive"], c["inconclusive"],
           c["error->ok"], c["error->error"], c["only_baseline"], c["only_candidate"], c["artifact_changed"]]
    return header, row


def headline(cmp: Comparison) -> str:
    n_reg, n_err = len(cmp.regressions), len(cmp.new_errors)
    if cmp.regressed:
        what = []
        if n_reg:
            what.append(f"{n_reg} job(s) slower by more than {cmp.threshold * 100:g} %")
        if n_err:
            what.append(f"{n_err} job(s) ok in the baseline now fail")
        return "**REGRESSION**: " + "; ".join(what) + "."
    return (f"**No regression** ({len(cmp.pairs)} job(s) compared, threshold ±{cmp.threshold * 100:g} %, "
            f"{cmp.confidence * 100:g} % intervals).")


# --------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------

def summary_markdown(cmp: Comparison) -> str:
    """Headline, counts per class, the worst regressions with their intervals, new errors."""
    base_id = cmp.baseline_run.get("run_id", "baseline")
    cand_id = cmp.candidate_run.get("run_id", "candidate")
    out = [f"# Regression report: `{cand_id}` vs `{base_id}`", "",
           f"Candidate {_run_line(cmp.candidate_run, cand_id)}; baseline {_run_line(cmp.baseline_run, base_id)}.",
           "", headline(cmp), ""]
    header, row = _counts_rows(cmp)
    out += [markdown_table(header, [row]), ""]
    if cmp.regressions:
        out += [f"## Worst regressions ({min(WORST, len(cmp.regressions))} of {len(cmp.regressions)})", ""]
        out.append(markdown_table(
            ["job", "baseline ms", "candidate ms", "change", f"{cmp.confidence * 100:g} % CI", "artifact changed",
             "notes"],
            [[p.label, f"{p.baseline_ms:.3f}", f"{p.candidate_ms:.3f}", pct(p.change), ci_text(p),
              "yes" if p.artifact_changed else "no", "; ".join(p.notes)] for p in cmp.regressions[:WORST]]))
        out.append("")
    if cmp.new_errors:
        out += ["## New errors (ok in the baseline)", ""]
        out.append(markdown_table(["job", "baseline ms", "error"],
                             [[s.label, "n/a" if s.baseline_ms is None else f"{s.baseline_ms:.3f}", s.message]
                              for s in cmp.new_errors]))
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _resampled(p: Pair) -> str:
    """What the interval resampled: ``10/10 rounds`` or ``3/1 blocks`` (block lengths), ``-`` for none."""
    if p.method == "rounds":
        return f"{p.rounds_baseline}/{p.rounds_candidate} rounds"
    if p.block_baseline or p.block_candidate:
        return f"{p.block_baseline or '-'}/{p.block_candidate or '-'} blocks"
    return "-"


def _pair_rows(cmp: Comparison) -> tuple[list[str], list[list[Any]]]:
    header = ["job", "baseline ms", "candidate ms", "change", f"{cmp.confidence * 100:g} % CI", "verdict",
              "n (base/cand)", "resampled (base/cand)", "artifact", "notes"]
    rows = []
    for p in cmp.pairs:
        art = (f"{p.baseline_sha256[:8]} -> {p.candidate_sha256[:8]}" if p.artifact_changed
               else f"{p.candidate_sha256[:8]} (same)")
        rows.append([p.label, f"{p.baseline_ms:.3f}", f"{p.candidate_ms:.3f}", pct(p.change), ci_text(p),
                     verdict_text(p), f"{p.n_baseline}/{p.n_candidate}",
                     _resampled(p), art, "; ".join(p.notes)])
    return header, rows


def _status_rows(changes: Sequence[StatusChange]) -> tuple[list[str], list[list[Any]]]:
    return (["job", "baseline", "candidate", "counts as", "message"],
            [[s.label, s.baseline_status, s.candidate_status,
              {"ok->error": "regression", "error->ok": "fixed", "error->error": "still failing"}[s.kind], s.message]
             for s in changes])


def _only_rows(records: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    return (["job", "status", "median ms"],
            [[job_label({**r, "options": options_key(r.get("runtime_options"))}), r["status"],
              "n/a" if r.get("median_ms") is None else f"{r['median_ms']:.3f}"] for r in records])


def markdown_report(cmp: Comparison, figures: Sequence[Path] = ()) -> str:
    """The whole report: summary, every compared job, errors, jobs of one run only, the method."""
    out = [summary_markdown(cmp).rstrip(), ""]
    out += ["## All compared jobs", "", "Sorted by change, slowest first.", ""]
    if cmp.pairs:
        out += [markdown_table(*_pair_rows(cmp)), ""]
    else:
        out += ["(no job was measured ok in both runs)", ""]
    if cmp.status_changes:
        out += ["## Jobs with an error in either run", "", markdown_table(*_status_rows(cmp.status_changes)), ""]
    for title, records in (("Only in the baseline", cmp.only_baseline), ("Only in the candidate", cmp.only_candidate)):
        if records:
            out += [f"## {title}", "", markdown_table(*_only_rows(records)), ""]
    if figures:
        out += ["## Figures", ""] + [f"![{Path(f).stem}]({Path(f).as_posix()})" for f in figures] + [""]
    out += ["## Method", "", method_text(cmp), ""]
    return "\n".join(out)


# --------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------

def _short_label(job: Mapping[str, Any], width: int = 48) -> str:
    """Two lines for a figure's y axis: model and variant, then device, runtime, options and batch."""
    first = f"{job['model']} {job['variant']}"
    options = job.get("options") or options_key(job.get("runtime_options"))
    opts = "" if options == "default" else f" [{options}]"
    second = f"{job['device']} {job['runtime']} (.{job['format']}){opts} bs{job['batch_size']}"
    cut = lambda t: t if len(t) <= width else t[:width - 1] + "…"  # noqa: E731
    return f"{cut(first)}\n{cut(second)}"


def regression_figure(cmp: Comparison, path: Path) -> Path | None:
    """Forest plot: each job's change with its interval, the ±threshold band shaded; None without pairs."""
    if not cmp.pairs:
        return None
    import matplotlib

    pairs = sorted(cmp.pairs, key=lambda p: -abs(p.change))[:MAX_FIGURE_JOBS]
    pairs.sort(key=lambda p: p.change)
    with matplotlib.rc_context(STYLE):
        fig = new_figure(FIGURE_WIDTH_IN, 1.9 + 0.42 * len(pairs), round_height=False)
        _draw_regression(fig, cmp, pairs)
        return _save_png(fig, path)


def _save_png(fig: Any, path: Path) -> Path:
    """The report's figures: PNG only, at FIGURE_DPI (they are embedded in the HTML)."""
    path = Path(path)
    return save_figure(fig, path.parent, path.stem, dpi=FIGURE_DPI, formats=("png",))[0]


def _draw_regression(fig: Any, cmp: Comparison, pairs: Sequence[Pair]) -> None:
    ax = fig.add_subplot(1, 1, 1)
    t = cmp.threshold * 100
    ax.axvspan(-t, t, color="#e0e0e0", zorder=0)
    ax.axvline(0, color="black", linewidth=0.8)
    extent = [t * 2]
    for i, p in enumerate(pairs):
        color = VERDICT_COLORS[verdict_text(p)]
        x = p.change * 100
        extent.append(abs(x))
        if p.ci_low is not None and p.ci_high is not None:
            ax.errorbar(x, i, xerr=[[x - p.ci_low * 100], [p.ci_high * 100 - x]], fmt="o", color=color,
                        capsize=3, markersize=4)
            extent += [abs(p.ci_low * 100), abs(p.ci_high * 100)]
        else:
            ax.plot(x, i, marker="x", color=color)
    limit = max(extent) * 1.1
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-0.6, len(pairs) - 0.4)
    ax.set_yticks(range(len(pairs)))
    ax.set_yticklabels([_short_label(p.__dict__) for p in pairs], fontsize=7)
    ax.set_xlabel(f"change of the median latency, % (candidate vs baseline; bars: {cmp.confidence * 100:g} % CI; "
                  f"grey: ±{t:g} % threshold)", fontsize=8)
    title = f"{cmp.candidate_run.get('run_id', 'candidate')} vs {cmp.baseline_run.get('run_id', 'baseline')}"
    if len(cmp.pairs) > len(pairs):
        title += f" ({len(pairs)} of {len(cmp.pairs)} jobs: the largest changes)"
    ax.set_title(title, fontsize=9)
    handles = [ax.plot([], [], "o", color=c, label=v)[0] for v, c in VERDICT_COLORS.items()]
    fig.legend(handles=handles, fontsize=7, loc="outside lower center", ncols=len(handles), frameon=False)
    ax.grid(axis="x", alpha=0.3)
    ax.grid(axis="y", visible=False)
    ax.tick_params(axis="x", labelsize=8)


def latency_figure(records: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Median latency per ok job (bar), min to p90 as whiskers; None without ok records."""
    ok = [r for r in records if r["status"] == "ok" and r.get("median_ms") is not None][:MAX_FIGURE_JOBS]
    if not ok:
        return None
    import matplotlib

    with matplotlib.rc_context(STYLE):
        fig = new_figure(FIGURE_WIDTH_IN, 1.4 + 0.42 * len(ok), round_height=False)
        _draw_latency(fig, ok)
        return _save_png(fig, path)


def _draw_latency(fig: Any, ok: Sequence[Mapping[str, Any]]) -> None:
    ax = fig.add_subplot(1, 1, 1)
    med = [r["median_ms"] for r in ok]
    lo = [max(0.0, m - (r.get("min_ms") or m)) for m, r in zip(med, ok)]
    hi = [max(0.0, (r.get("p90_ms") or m) - m) for m, r in zip(med, ok)]
    ax.barh(range(len(ok)), med, xerr=[lo, hi], color="#90a4ae", capsize=3)
    ax.set_yticks(range(len(ok)))
    ax.set_yticklabels([_short_label(r) for r in ok], fontsize=7)
    ax.set_xlabel("median latency, ms (whiskers: min to p90)")
    ax.grid(axis="x", alpha=0.3)
    ax.grid(axis="y", visible=False)


def run_figures(records: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """The run's own PNG figures from :mod:`results.figures` (speedup bars, latency distributions).

    Those figures are a bonus next to the regression verdict: any failure in
    them is logged and skipped, never fatal.
    """
    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        return []
    try:
        from results import figures
        kinds = [k for k in RUN_FIGURE_KINDS if k in getattr(figures, "FIGURES", {})]
        made = figures.make_figures(ok, Path(out_dir), kinds=kinds)
    except Exception as exc:  # noqa: BLE001 - optional figures, never fatal
        log.warning("results.figures failed, report without the run's figures: %s", exc)
        return []
    return [Path(p) for result in made.values() for p in (getattr(result, "paths", None) or [])
            if Path(p).suffix.lower() == ".png" and Path(p).is_file()]


# --------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #212121; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #bdbdbd; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #eeeeee; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.regressed { color: #c62828; font-weight: bold; } .improved { color: #2e7d32; }
.inconclusive { color: #ef6c00; } .bad { background: #ffebee; } .good { background: #e8f5e9; } .warn { background: #fff3e0; }
img { max-width: 100%; border: 1px solid #e0e0e0; margin: 0.5em 0; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""


def _inline_md(text: str) -> str:
    """Escape for HTML and render the little markdown the summary uses (**bold**, `code`)."""
    out = html.escape(text)
    parts = out.split("**")
    out = "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))
    parts = out.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _html_table(header: Sequence[str], rows: Iterable[Sequence[Any]], row_class: Callable | None = None,
                numeric: Iterable[int] = ()) -> str:
    numeric = set(numeric)
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>"]
    for row in rows:
        cls = row_class(row) if row_class else ""
        cells = []
        for i, cell in enumerate(row):
            attr = ' class="num"' if i in numeric else ""
            cells.append(f"<td{attr}>{html.escape(str(cell))}</td>")
        tr = f'<tr class="{cls}">' if cls else "<tr>"
        out.append(tr + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(Path(path).stem)}" src="data:image/png;base64,{data}"></figure>'


def html_report(cmp: Comparison, figures: Sequence[Path] = ()) -> str:
    """A self-contained HTML page: the summary, the figures (embedded base64 PNG), every table, the method."""
    base_id = cmp.baseline_run.get("run_id", "baseline")
    cand_id = cmp.candidate_run.get("run_id", "candidate")
    verdict_class = {"regressed": "bad", "improved": "good", "inconclusive": "warn"}
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>Regression report {html.escape(cand_id)} vs {html.escape(base_id)}</title>",
           f"<style>{_CSS}</style></head><body>",
           f"<h1>Regression report: <code>{html.escape(cand_id)}</code> vs <code>{html.escape(base_id)}</code></h1>",
           f"<p>Candidate {_inline_md(_run_line(cmp.candidate_run, cand_id))}; baseline "
           f"{_inline_md(_run_line(cmp.baseline_run, base_id))}.</p>",
           f"<p class=\"{'regressed' if cmp.regressed else 'improved'}\">{_inline_md(headline(cmp))}</p>"]
    header, row = _counts_rows(cmp)
    out.append(_html_table(header, [row], numeric=range(len(header))))
    if cmp.regressions:
        out.append("<h2>Worst regressions</h2>")
        out.append(_html_table(
            ["job", "baseline ms", "candidate ms", "change", f"{cmp.confidence * 100:g} % CI", "notes"],
            [[p.label, f"{p.baseline_ms:.3f}", f"{p.candidate_ms:.3f}", pct(p.change), ci_text(p),
              "; ".join(p.notes)] for p in cmp.regressions[:WORST]], numeric=(1, 2, 3)))
    if cmp.new_errors:
        out.append("<h2>New errors (ok in the baseline)</h2>")
        out.append(_html_table(["job", "error"], [[s.label, s.message] for s in cmp.new_errors]))
    if figures:
        out.append("<h2>Figures</h2>")
        out += [_img(f) for f in figures]
    out.append("<h2>All compared jobs</h2>")
    if cmp.pairs:
        header, rows = _pair_rows(cmp)
        out.append(_html_table(header, rows, numeric=(1, 2, 3),
                               row_class=lambda r: verdict_class.get(r[5], "")))
    else:
        out.append("<p>(no job was measured ok in both runs)</p>")
    if cmp.status_changes:
        out.append("<h2>Jobs with an error in either run</h2>")
        out.append(_html_table(*_status_rows(cmp.status_changes),
                               row_class=lambda r: "bad" if r[3] == "regression" else ""))
    for title, records in (("Only in the baseline", cmp.only_baseline), ("Only in the candidate", cmp.only_candidate)):
        if records:
            out += [f"<h2>{title}</h2>", _html_table(*_only_rows(records), numeric=(2,))]
    out += ["<h2>Method</h2>", f"<p>{html.escape(method_text(cmp))}</p>", "</body></html>"]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------

def write_reports(cmp: Comparison, out_dir: Path, candidate_records: Sequence[Mapping[str, Any]] = ()
                  ) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and the PNG figures into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = [f for f in [regression_figure(cmp, out_dir / "regression.png")] if f is not None]
    figures += run_figures(candidate_records, out_dir / "figures")
    md = out_dir / "report.md"
    md.write_text(markdown_report(cmp, [f.relative_to(out_dir) if f.is_relative_to(out_dir) else f
                                        for f in figures]))
    page = out_dir / "report.html"
    page.write_text(html_report(cmp, figures))
    return {"markdown": md, "html": page, **{f"figure:{f.stem}": f for f in figures}}


# --------------------------------------------------------------------------
# A run without a baseline
# --------------------------------------------------------------------------

def no_baseline_markdown(run: Mapping[str, Any], records: Sequence[Mapping[str, Any]], hint: str) -> str:
    run_id = run.get("run_id", "run")
    ok = [r for r in records if r["status"] == "ok"]
    errors = [r for r in records if r["status"] != "ok"]
    out = [f"# Regression report: `{run_id}`", "", f"Run {_run_line(run, run_id)}.", "",
           f"**No baseline to compare with.** {hint}", "",
           f"{len(ok)} job(s) ok, {len(errors)} error(s).", ""]
    if records:
        out.append(markdown_table(["job", "status", "median ms", "n", "cv"],
                             [[job_label({**r, "options": options_key(r.get("runtime_options"))}), r["status"],
                               "n/a" if r.get("median_ms") is None else f"{r['median_ms']:.3f}", r.get("n") or 0,
                               "n/a" if r.get("cv") is None else f"{r['cv']:.3f}"] for r in records]))
        out.append("")
    if errors:
        out += ["## Errors", "", markdown_table(["job", "error"], [[job_label({**r, "options": options_key(
            r.get("runtime_options"))}), f"[{r.get('error_stage')}] {r.get('error_message')}"] for r in errors]), ""]
    return "\n".join(out)


def write_no_baseline(run: Mapping[str, Any], records: Sequence[Mapping[str, Any]], out_dir: Path,
                      hint: str) -> dict[str, Path]:
    """The report of a run that has nothing to be compared with: what it measured, and how to make a baseline."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = no_baseline_markdown(run, records, hint)
    figures = [f for f in [latency_figure(records, out_dir / "latency.png")] if f is not None]
    figures += run_figures(records, out_dir / "figures")
    md = out_dir / "report.md"
    md.write_text(text + ("\n## Figures\n\n" + "\n".join(f"![{f.stem}]({f.relative_to(out_dir)})" for f in figures)
                          + "\n" if figures else ""))
    body = "\n".join(f"<p>{_inline_md(line)}</p>" for line in text.splitlines()
                     if line and not line.startswith(("|", "#")))
    rows = [[job_label({**r, "options": options_key(r.get("runtime_options"))}), r["status"],
             "n/a" if r.get("median_ms") is None else f"{r['median_ms']:.3f}",
             r.get("error_message") or ""] for r in records]
    page = out_dir / "report.html"
    page.write_text("\n".join([
        "<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>Report {html.escape(str(run.get('run_id', '')))}</title><style>{_CSS}</style></head><body>",
        f"<h1>Report: <code>{html.escape(str(run.get('run_id', '')))}</code></h1>", body,
        _html_table(["job", "status", "median ms", "error"], rows, numeric=(2,)),
        *[_img(f) for f in figures], "</body></html>"]) + "\n")
    return {"markdown": md, "html": page, **{f"figure:{f.stem}": f for f in figures}}

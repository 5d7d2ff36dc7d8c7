"""The ablation's numbers as markdown tables (README.md and the command's closing summary).

Every table goes through `results.markdown.markdown_table`, the project's one table writer;
this module only decides rows, columns and number formats. Criteria measured over several
seeds (``random``) are shown as mean ± sd.
"""

from __future__ import annotations

import statistics
from typing import Sequence

from results.markdown import markdown_table

#: Measurements averaged over seeds by `summarise`.
SUMMARY_KEYS = ("acc_pruned", "acc_finetuned", "cosine", "kl", "cosine_qk", "kl_qk")


def summarise(rows: list[dict]) -> list[dict]:
    """One row per (ratio, criterion): means over seeds, with the std where there are several."""
    out = []
    seen: dict[tuple, list[dict]] = {}
    for r in rows:
        seen.setdefault((r["ratio"], r["criterion"]), []).append(r)
    for (ratio, crit), group in seen.items():
        s = {"ratio": ratio, "criterion": crit, "n": len(group), "params": group[0]["params"]}
        for k in SUMMARY_KEYS:
            vals = [g[k] for g in group if k in g]
            if vals:
                s[k] = statistics.fmean(vals)
                s[k + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(s)
    return out


def _mean_sd(mean: float, sd: float | None, digits: int, scale: float) -> str:
    """``mean`` or ``mean ± sd`` (sd None: a single measurement), scaled and rounded."""
    text = f"{mean * scale:.{digits}f}"
    return text if sd is None else text + f" ± {sd * scale:.{digits}f}"


def _summary_cell(s: dict, key: str, digits: int = 1, scale: float = 100.0) -> str:
    if key not in s:
        return "–"
    return _mean_sd(s[key], s[key + "_std"] if s.get("n", 1) > 1 else None, digits, scale)


def _values_cell(values: Sequence[float], digits: int) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return _mean_sd(values[0], None, digits, 1.0)
    return _mean_sd(statistics.mean(values), statistics.stdev(values), digits, 1.0)


def results_table(summary: list[dict]) -> str:
    """The main sweep: accuracy and attention fidelity per ratio and criterion (from `summarise`)."""
    header = ["removed (Q/K, V, FFN)", "criterion", "test acc. pruned (%)", "test acc. fine-tuned (%)",
              "attention cosine ↑", "attention KL ↓", "Q/K-only attention cosine ↑", "Q/K-only attention KL ↓"]
    rows = []
    for s in summary:
        label = s["criterion"] + (f" (×{s['n']} seeds)" if s["n"] > 1 else "")
        if s["params"]:
            label += " (" + ", ".join(f"{k}={v}" for k, v in s["params"].items()) + ")"
        rows.append([f"{s['ratio']:.0%}", label, _summary_cell(s, "acc_pruned"), _summary_cell(s, "acc_finetuned"),
                     *(_summary_cell(s, k, 4, 1.0) for k in ("cosine", "kl", "cosine_qk", "kl_qk"))])
    return markdown_table(header, rows)


def ordering(summary: list[dict], key: str, ratio: float, reverse: bool = True) -> str:
    """Criteria at `ratio` from best to worst by `key` (``a > b > c``)."""
    rows = sorted((s for s in summary if s["ratio"] == ratio and key in s), key=lambda s: s[key], reverse=reverse)
    return " > ".join(s["criterion"] for s in rows)


def ordering_table(summary: list[dict]) -> str:
    """Per ratio, the criteria ordered by each measure (best first)."""
    header = ["removed", "attention cosine", "Q/K-only attention cosine", "accuracy pruned", "accuracy fine-tuned"]
    rows = [[f"{r:.0%}", *(ordering(summary, key, r) for key in ("cosine", "cosine_qk", "acc_pruned", "acc_finetuned"))]
            for r in sorted({s["ratio"] for s in summary})]
    return markdown_table(header, rows)


def variants_table(variants: list[dict]) -> str:
    """SNP's open choices, best attention cosine first."""
    header = ["γ", "weighting", "aggregate", "attention cosine ↑", "attention KL ↓", "test acc. pruned (%)"]
    rows = [[v["gamma"], v["weighting"], v["aggregate"], f"{v['cosine']:.4f}", f"{v['kl']:.4f}",
             f"{v['acc_pruned'] * 100:.1f}"] for v in sorted(variants, key=lambda r: -r["cosine"])]
    return markdown_table(header, rows)


def per_kind_table(rows: list[dict]) -> str:
    """One line per group kind pruned alone; per criterion its accuracy and attention cosine."""
    if not rows:
        return "(not run)"
    criteria = list(dict.fromkeys(r["criterion"] for r in rows))
    header = ["pruned alone", *(f"{c}: acc. (%) / attn. cos" for c in criteria)]
    lines = []
    for kind in dict.fromkeys(r["kind"] for r in rows):
        cells = {r["criterion"]: r for r in rows if r["kind"] == kind}
        lines.append([kind, *(f"{cells[c]['acc_pruned'] * 100:.1f} / {cells[c]['cosine']:.4f}" for c in criteria)])
    return markdown_table(header, lines)


def heads_table(rows: list[dict]) -> str:
    """One line per (ratio, head criterion); random: mean ± sd over its seeds."""
    if not rows:
        return "(not run)"
    header = ["heads removed", "head criterion", "test acc. pruned (%)", "test acc. fine-tuned (%)", "output KL ↓"]
    lines = []
    for ratio in dict.fromkeys(r["ratio"] for r in rows):
        for name in dict.fromkeys(r["head_criterion"] for r in rows):
            group = [r for r in rows if r["ratio"] == ratio and r["head_criterion"] == name]
            cells = [_values_cell([r[key] * scale for r in group if key in r], digits)
                     for key, scale, digits in (("acc_pruned", 100.0, 1), ("acc_finetuned", 100.0, 1),
                                                ("output_kl", 1.0, 4))]
            lines.append([f"{ratio:.0%} ({group[0]['heads_kept']} kept)", name, *cells])
    return markdown_table(header, lines)
